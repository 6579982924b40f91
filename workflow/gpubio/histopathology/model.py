"""A CONCH-style (CoCa) vision-language model in plain torch, loaded from a local directory.

Layout of the weights directory (nothing is downloaded)::

    config.json   architecture: image_size, patch_size, width, depth, heads, embed_dim,
                  text_width, text_depth, text_heads, context_length, vocab_size
                  (optional: mlp_ratio = 4, mean, std = the CLIP image statistics,
                  pad_token, bos_token, eos_token, unk_token, lowercase = true)
    model.pt      torch state dict of VisionLanguageModel (keys as below)
    vocab.txt     WordPiece vocabulary, one token per line (line number = token id)

Image tower: ViT (patch embedding, class token, learned positions, pre-norm blocks), then
CoCa's attentional pooling (one learned query attends over all tokens) and a projection.
Text tower: causal transformer over token + position embeddings with a class embedding
appended after the last position (CoCa), its output projected. Both are compared by
cosine similarity times exp(logit_scale), as in CLIP / CoCa / CONCH.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gpubio.histopathology.weights import CLIP_MEAN, CLIP_STD, ModelError, read_model_config


class Block(nn.Module):
    """Pre-norm transformer block: attention and MLP, each with a residual connection."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x, attn_mask=None, key_padding_mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ImageTower(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        width, grid = c["width"], c["image_size"] // c["patch_size"]
        self.patch_embed = nn.Conv2d(3, width, kernel_size=c["patch_size"], stride=c["patch_size"])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, width) * 0.02)
        self.blocks = nn.ModuleList(Block(width, c["heads"], c.get("mlp_ratio", 4)) for _ in range(c["depth"]))
        self.ln_post = nn.LayerNorm(width)
        self.pool_query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pool_attn = nn.MultiheadAttention(width, c["heads"], batch_first=True)
        self.ln_pool = nn.LayerNorm(width)
        self.proj = nn.Linear(width, c["embed_dim"], bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        x = self.ln_post(x)
        query = self.pool_query.expand(len(x), -1, -1)
        pooled = self.pool_attn(query, x, x, need_weights=False)[0][:, 0]
        return self.proj(self.ln_pool(pooled))


class TextTower(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        width, self.context_length = c["text_width"], c["context_length"]
        self.token_embedding = nn.Embedding(c["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.randn(self.context_length, width) * 0.01)
        self.cls_emb = nn.Parameter(torch.randn(width) * 0.02)
        self.blocks = nn.ModuleList(
            Block(width, c["text_heads"], c.get("mlp_ratio", 4)) for _ in range(c["text_depth"])
        )
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, c["embed_dim"], bias=False)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """tokens, padding: (batch, context_length - 1); the class embedding takes the last place."""
        x = self.token_embedding(tokens)
        x = torch.cat([x, self.cls_emb.expand(len(x), 1, -1)], dim=1) + self.positional_embedding
        padding = torch.cat([padding, torch.zeros_like(padding[:, :1])], dim=1)
        n = x.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        for block in self.blocks:
            x = block(x, attn_mask=causal, key_padding_mask=padding)
        return self.text_projection(self.ln_final(x[:, -1]))


class VisionLanguageModel(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.visual = ImageTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.text(tokens, padding)


class WordPieceTokenizer:
    """BERT-style WordPiece: lower-case, split on spaces and punctuation, greedy longest match
    with '##' continuations; sequences are [BOS] tokens [EOS] padded to a fixed length."""

    def __init__(self, vocab: list[str], config: dict):
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.lowercase = config.get("lowercase", True)
        self.special = {}
        for role, default in (("pad", "[PAD]"), ("bos", "[CLS]"), ("eos", "[SEP]"), ("unk", "[UNK]")):
            token = config.get(f"{role}_token", default)
            if token not in self.ids:
                raise ModelError(f"vocab.txt has no {role} token {token!r}; add it or set {role}_token in config.json")
            self.special[role] = self.ids[token]

    def _word_ids(self, word: str) -> list[int]:
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    break
                end -= 1
            if end == start:
                return [self.special["unk"]]
            pieces.append(self.ids[piece])
            start = end
        return pieces

    def encode(self, texts: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and padding mask (True = padding), each (len(texts), length)."""
        tokens = torch.full((len(texts), length), self.special["pad"], dtype=torch.long)
        for row, text in enumerate(texts):
            text = text.lower() if self.lowercase else text
            ids = [i for word in re.findall(r"\w+|[^\w\s]", text) for i in self._word_ids(word)]
            ids = [self.special["bos"], *ids[: length - 2], self.special["eos"]]
            tokens[row, : len(ids)] = torch.tensor(ids)
        return tokens, tokens == self.special["pad"]


class LoadedModel:
    """The model, its tokenizer and image statistics, ready to embed tiles and prompts."""

    def __init__(self, model: VisionLanguageModel, tokenizer: WordPieceTokenizer, device):
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        c = model.config
        self.image_size = c["image_size"]
        self.mean = torch.tensor(c.get("mean", CLIP_MEAN), device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(c.get("std", CLIP_STD), device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed_images(self, tiles: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 RGB tiles -> (n, embed_dim) float32 image embeddings."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = nn.functional.interpolate(
                x, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
            )
        return self.model.encode_image((x - self.mean) / self.std).float().cpu().numpy()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens, padding = self.tokenizer.encode(texts, self.model.config["context_length"] - 1)
        return self.model.encode_text(tokens.to(self.device), padding.to(self.device)).float().cpu().numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def load_model(directory, device="cpu") -> LoadedModel:
    """The model in `directory` (config.json + model.pt + vocab.txt) on `device`."""
    directory = Path(directory)
    config = read_model_config(directory)
    vocab = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if len(vocab) != config["vocab_size"]:
        raise ModelError(
            f"{directory}: vocab.txt has {len(vocab)} tokens but config.json says vocab_size {config['vocab_size']}; give the matching vocabulary"
        )
    model = VisionLanguageModel(config)
    try:
        state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds on a damaged file)
        raise ModelError(f"{directory}/model.pt cannot be read as a torch state dict ({exc})") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"{directory}/model.pt does not match config.json: missing {result.missing_keys[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}; convert the weights to this layout (README, Histopathology)"
        )
    return LoadedModel(model, WordPieceTokenizer(vocab, config), device)


def save_model(model: VisionLanguageModel, vocab: list[str], directory) -> None:
    """Write `model` in the layout load_model reads (used to stage converted weights)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
    torch.save(model.state_dict(), directory / "model.pt")
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
