"""A tiny CONCH for the histopathology tests, in CONCH's released layout.

The network is CONCH's architecture at small size (gpubio's rebuild, whose keys are the
released ones), randomly initialised and then trained for a few seconds to match tiles of
the planted textures with their prompts, so zero-shot labels have a known right answer on the
test slide. The tokenizer is a byte-level BPE file in the form of CONCH's, trained here on the
prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from independent.histopathology import REGIONS, reduce

CLASSES = {
    "tumor": ["an H&E image of tumor tissue with dense purple nuclei", "an image of tumor"],
    "stroma": ["an H&E image of stroma with pink fibres", "an image of fibrous connective tissue"],
}
REGION_CLASS = {"nuclei": "tumor", "fibres": "stroma"}
SPECIAL_TOKENS = ["<pad>", "<start_of_text>", "<end_of_text>"]


def model_config(vocab_size: int, context_length: int = 16) -> dict:
    """A CONCH model config (the format of conch_ViT-B-16.json) at small size."""
    return {
        "embed_dim": 16,
        "embed_dim_caption": 32,
        "vision_cfg": {
            "image_size": 32,
            "patch_size": 8,
            "layers": 2,
            "width": 32,
            "num_heads": 4,
            "attentional_pool_caption": True,
            "attentional_pool_contrast": True,
            "attn_pooler_heads": 8,
            "n_queries_contrast": 1,
            "n_queries_caption": 4,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": 32,
            "heads": 4,
            "layers": 2,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": 32,
            "heads": 4,
            "layers": 1,
        },
        "custom_text": True,
    }


def write_tokenizer(path: Path, texts: list[str], vocab_size: int = 300) -> int:
    """A tokenizer file in the form of CONCH's (byte-level BPE, lower-cased, accents stripped,
    <start_of_text> ... <end_of_text>, <pad> = 0) trained on `texts`; returns its size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<start_of_text> $A <end_of_text>",
        special_tokens=[("<start_of_text>", 1), ("<end_of_text>", 2)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return tokenizer.get_vocab_size()


def training_tiles(level0: np.ndarray, per_region: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """224 px tiles at 0.5 µm/px (448 px at level 0, halved) from random places in each region."""
    tiles, labels = [], []
    for region in REGIONS:
        for _ in range(per_region):
            x = rng.integers(region.x0, region.x1 - 448)
            y = rng.integers(region.y0, region.y1 - 448)
            tiles.append(reduce(level0[y : y + 448, x : x + 448], 2))
            labels.append(list(CLASSES).index(REGION_CLASS[region.name]))
    return np.stack(tiles), np.array(labels)


def write_tiny_model(directory, level0: np.ndarray, steps: int = 60, seed: int = 0) -> None:
    import torch

    from gpubio.histopathology.model import Conch, ConchTokenizer, LoadedModel
    from gpubio.histopathology.weights import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, architecture

    directory = Path(directory)
    prompts = [p for texts in CLASSES.values() for p in texts]
    size = write_tokenizer(directory / TOKENIZER_FILE, prompts)
    config = model_config(size)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Conch(architecture(config, "test"))
    loaded = LoadedModel(model, ConchTokenizer(directory / TOKENIZER_FILE, 0), "cpu")
    tokens = {
        name: loaded.tokenizer.encode(texts, config["text_cfg"]["context_length"] - 1)
        for name, texts in CLASSES.items()
    }
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        tiles, labels = training_tiles(level0, 8, rng)
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", antialias=True, align_corners=False)
        images = torch.nn.functional.normalize(model.encode_image((x.clamp(0, 1) - loaded.mean) / loaded.std), dim=-1)
        classes = torch.stack(
            [torch.nn.functional.normalize(model.encode_text(tokens[name]), dim=-1).mean(0) for name in CLASSES]
        )
        logits = model.logit_scale.exp() * images @ torch.nn.functional.normalize(classes, dim=-1).T
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    torch.save(model.state_dict(), directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
