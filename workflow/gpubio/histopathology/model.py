"""CONCH, a CoCa-style vision-language model for pathology, loaded from its released files.

The network is CONCH's (its code: conch/open_clip_custom, CC BY-NC-ND 4.0) rebuilt in plain
torch with the same module names, so the released state dict loads key for key: CONCH's
own code and open_clip need torchvision and timm, which a CPU-only torch cannot always
import, and open_clip's CoCa has another image tower (its own ViT, not timm's), so it cannot
load CONCH's keys. The captioning parts (``text_decoder.*``, ``visual.attn_pool_caption``,
``visual.ln_caption``) are not needed for embeddings and are not built.

Image tower ``visual``: timm's VisionTransformer (``trunk``: patch embedding, class token,
learned positions, pre-norm blocks, LayerNorm eps 1e-6), attentional pooling with one
learned query (``attn_pool_contrast``), ``ln_contrast`` and ``proj_contrast``. Text tower
``text``: open_clip's TextTransformer with a class embedding appended after the tokens,
causal attention, ``ln_final`` on the class position, ``text_projection``. Both compare by
cosine similarity times exp(``logit_scale``). The tokenizer is CONCH's byte-level BPE file
through transformers' PreTrainedTokenizerFast, as CONCH's ``tokenize`` calls it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from gpubio.histopathology.weights import (
    CLIP_MEAN,
    CLIP_STD,
    CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ModelError,
    read_model_config,
)

# parts of the released state dict used only for captioning
CAPTION_PREFIXES = ("text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")


class TimmAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class TimmMlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = TimmAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = TimmMlp(width, int(width * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images):
        return self.proj(images).flatten(2).transpose(1, 2)


class VisionTrunk(nn.Module):
    """timm's VisionTransformer.forward_features, no classifier head (CONCH's ``visual.trunk``)."""

    def __init__(self, c: dict):
        super().__init__()
        width, grid = c["width"], c["image_size"] // c["patch_size"]
        self.patch_embed = PatchEmbed(c["patch_size"], width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, width) * 0.02)
        self.blocks = nn.Sequential(*(TimmBlock(width, c["heads"], c["mlp_ratio"]) for _ in range(c["depth"])))
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, images):
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))


class AttentionalPooler(nn.Module):
    """open_clip's AttentionalPooler: learned queries attend over the image tokens."""

    def __init__(self, d_model: int, context_dim: int, heads: int, queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, heads, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x):
        x = self.ln_k(x).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, x.shape[1], -1)
        return self.attn(q, x, x, need_weights=False)[0].permute(1, 0, 2)


class VisualModel(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        self.trunk = VisionTrunk(c)
        self.attn_pool_contrast = AttentionalPooler(c["embed_dim"], c["width"], c["pooler_heads"], 1)
        self.ln_contrast = nn.LayerNorm(c["embed_dim"])
        self.proj_contrast = nn.Parameter(c["width"] ** -0.5 * torch.randn(c["embed_dim"], c["embed_dim"]))

    def forward(self, images):
        pooled = self.ln_contrast(self.attn_pool_contrast(self.trunk(images))[:, 0])
        return pooled @ self.proj_contrast


class ResidualAttentionBlock(nn.Module):
    """open_clip's block: pre-norm, torch attention (sequence first), GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x, attn_mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class TextStack(nn.Module):
    def __init__(self, width: int, heads: int, depth: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, 4.0) for _ in range(depth))


class TextTransformer(nn.Module):
    def __init__(self, c: dict):
        super().__init__()
        width, self.heads, self.pad_id = c["text_width"], c["text_heads"], c["pad_id"]
        self.context_length = c["context_length"]
        self.text_projection = nn.Parameter(torch.randn(width, c["embed_dim"]) * width**-0.5)
        self.cls_emb = nn.Parameter(torch.randn(width) * 0.01)
        self.token_embedding = nn.Embedding(c["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.randn(self.context_length, width) * 0.01)
        self.transformer = TextStack(width, self.heads, c["text_depth"])
        self.ln_final = nn.LayerNorm(width)

    def attention_mask(self, text):
        """Causal mask plus the class token's view of the text, as open_clip's build_cls_mask
        builds it: the class row's column j + 1 follows whether token j is padding."""
        n, length = text.shape
        size = length + 1
        causal = torch.full((size, size), float("-inf"), device=text.device).triu_(1)
        allowed = F.pad((text != self.pad_id).unsqueeze(1), (1, 0, length, 0), value=True)
        cls = torch.zeros(allowed.shape, device=text.device).masked_fill_(~allowed, float("-inf"))
        return torch.repeat_interleave(causal[None] + cls, self.heads, 0)

    def forward(self, text):
        """text: (batch, context_length - 1) token ids; the class embedding takes the last place."""
        x = torch.cat([self.token_embedding(text), self.cls_emb.expand(len(text), 1, -1)], dim=1)
        x = (x + self.positional_embedding[: x.shape[1]]).permute(1, 0, 2)
        mask = self.attention_mask(text)
        for block in self.transformer.resblocks:
            x = block(x, mask)
        return self.ln_final(x.permute(1, 0, 2)[:, -1]) @ self.text_projection


class Conch(nn.Module):
    """CONCH's CoCa without the captioning decoder: state-dict keys as released."""

    def __init__(self, architecture: dict):
        super().__init__()
        self.architecture = dict(architecture)
        self.text = TextTransformer(architecture)
        self.visual = VisualModel(architecture)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def encode_image(self, images):
        """Projected image embeddings (CONCH's encode_image with normalize=False)."""
        return self.visual(images)

    def encode_text(self, tokens):
        """Projected text embeddings of (batch, context_length - 1) token ids."""
        return self.text(tokens)


class ConchTokenizer:
    """CONCH's tokenize(): <start_of_text> text <end_of_text>, cut and padded with <pad> to a fixed length."""

    def __init__(self, path: Path, pad_id: int):
        try:
            from transformers import PreTrainedTokenizerFast

            self.tokenizer = PreTrainedTokenizerFast(
                tokenizer_file=str(path), bos_token="<start_of_text>", eos_token="<end_of_text>", pad_token="<pad>"
            )
        except Exception as exc:  # noqa: BLE001  (tokenizers raises its own kinds on a bad file)
            raise ModelError(
                f"{path} cannot be read as a tokenizer ({exc}); copy CONCH's tokenizer file again"
            ) from None
        vocab = self.tokenizer.get_vocab()
        absent = [t for t in ("<pad>", "<start_of_text>", "<end_of_text>") if t not in vocab]
        if absent:
            raise ModelError(f"{path} has no {', '.join(absent)} token; it is not CONCH's tokenizer")
        if vocab["<pad>"] != pad_id:
            raise ModelError(f"{path}: <pad> is token {vocab['<pad>']} but the model pads with {pad_id}")

    def __len__(self) -> int:
        return len(self.tokenizer.get_vocab())

    def encode(self, texts: list[str], length: int) -> torch.Tensor:
        return self.tokenizer(
            texts,
            max_length=length,
            add_special_tokens=True,
            return_token_type_ids=False,
            truncation=True,
            padding="max_length",
            return_tensors="pt",
        )["input_ids"]


class LoadedModel:
    """The model, its tokenizer and image statistics, ready to embed tiles and prompts."""

    def __init__(self, model: Conch, tokenizer: ConchTokenizer, device):
        self.model, self.tokenizer, self.device = model.to(device).eval(), tokenizer, device
        self.image_size = model.architecture["image_size"]
        self.mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def embed_images(self, tiles: np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 RGB tiles -> (n, embed_dim) float32 image embeddings; tiles are
        resized (bicubic, as CONCH's preprocessing) to the model's image size."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size,) * 2, mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp(0, 1)
        return self.model.encode_image((x - self.mean) / self.std).float().cpu().numpy()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer.encode(texts, self.model.architecture["context_length"] - 1)
        return self.model.encode_text(tokens.to(self.device)).float().cpu().numpy()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())


def read_state_dict(path: Path) -> dict:
    """The state dict as CONCH's read_state_dict takes it: a bare dict, or under 'state_dict',
    with any 'module.' prefix of a distributed run removed."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (torch raises many kinds on a damaged file)
        raise ModelError(f"{path} cannot be read as a torch state dict ({exc}); download it again") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ModelError(f"{path} holds no state dict; download CONCH's {WEIGHTS_FILE} again")
    if next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_model(directory, device="cpu") -> LoadedModel:
    """CONCH from `directory` (pytorch_model.bin, its tokenizer, optionally its model config) on `device`."""
    directory = Path(directory)
    architecture = read_model_config(directory)
    tokenizer = ConchTokenizer(directory / TOKENIZER_FILE, architecture["pad_id"])
    if len(tokenizer) > architecture["vocab_size"]:
        raise ModelError(
            f"{directory / TOKENIZER_FILE} has {len(tokenizer)} tokens but the model embeds "
            f"{architecture['vocab_size']}; the tokenizer belongs to another model"
        )
    path = directory / WEIGHTS_FILE
    state = read_state_dict(path)
    model = Conch(architecture)
    expected = model.state_dict()
    config = CONFIG_FILE if (directory / CONFIG_FILE).is_file() else f"CONCH's published {CONFIG_FILE}"
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(
            f"{path}: {len(missing)} weights of CONCH's image and text towers are missing "
            f"(e.g. {', '.join(missing[:3])}); it is not a CONCH state dict"
        )
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"{path}: {k} has shape {tuple(state[k].shape)} but {config} implies {tuple(expected[k].shape)}; "
            f"give the model config released with these weights as {CONFIG_FILE}"
        )
    unexpected = [k for k in state if k not in expected and not k.startswith(CAPTION_PREFIXES)]
    if unexpected:
        raise ModelError(
            f"{path}: weights CONCH does not have (e.g. {', '.join(unexpected[:3])}); "
            f"it is another architecture than {config}"
        )
    model.load_state_dict({k: state[k] for k in expected})
    return LoadedModel(model, tokenizer, device)
