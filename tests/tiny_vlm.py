"""A tiny CONCH-style model for the histopathology tests, in the module's weights layout.

The network is gpubio's (the layout under test is its state dict), randomly initialised and
then trained for a few seconds to match tiles of the planted textures with their prompts,
so zero-shot labels have a known right answer on the test slide.
"""

from __future__ import annotations

import numpy as np

from independent.histopathology import REGIONS, reduce

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "an",
    "h",
    "&",
    "e",
    "image",
    "of",
    "tumor",
    "tissue",
    "stroma",
    "with",
    "dense",
    "purple",
    "nuclei",
    "pink",
    "fibres",
    "##s",
    "fibrous",
    "connective",
]
CONFIG = {
    "image_size": 32,
    "patch_size": 8,
    "width": 32,
    "depth": 2,
    "heads": 4,
    "embed_dim": 16,
    "text_width": 32,
    "text_depth": 2,
    "text_heads": 4,
    "context_length": 16,
    "vocab_size": len(VOCAB),
}
CLASSES = {
    "tumor": ["an H&E image of tumor tissue with dense purple nuclei", "an image of tumor"],
    "stroma": ["an H&E image of stroma with pink fibres", "an image of fibrous connective tissue"],
}
REGION_CLASS = {"nuclei": "tumor", "fibres": "stroma"}


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


def write_tiny_model(directory, level0: np.ndarray, steps: int = 30, seed: int = 0) -> None:
    import torch

    from gpubio.histopathology.model import LoadedModel, VisionLanguageModel, WordPieceTokenizer, save_model

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = VisionLanguageModel(CONFIG)
    loaded = LoadedModel(model, WordPieceTokenizer(VOCAB, CONFIG), "cpu")
    tokens = {name: loaded.tokenizer.encode(prompts, CONFIG["context_length"] - 1) for name, prompts in CLASSES.items()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        tiles, labels = training_tiles(level0, 8, rng)
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        images = torch.nn.functional.normalize(model.encode_image((x - loaded.mean) / loaded.std), dim=-1)
        classes = torch.stack(
            [torch.nn.functional.normalize(model.encode_text(*tokens[name]), dim=-1).mean(0) for name in CLASSES]
        )
        logits = model.logit_scale.exp() * images @ torch.nn.functional.normalize(classes, dim=-1).T
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    save_model(model, VOCAB, directory)
