"""The layout of a local vision-language weights directory, read without torch.

The Snakefile reads config.json while it builds the DAG (start-up checks, GPU memory), so
this module stays light; gpubio.histopathology.model builds and loads the network.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpubio.errors import UnusableInput

REQUIRED_KEYS = (
    "image_size",
    "patch_size",
    "width",
    "depth",
    "heads",
    "embed_dim",
    "text_width",
    "text_depth",
    "text_heads",
    "context_length",
    "vocab_size",
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FILES = ("config.json", "model.pt", "vocab.txt")


class ModelError(UnusableInput):
    """A weights directory that does not hold a loadable model; the message says what to fix."""


def read_model_config(directory) -> dict:
    """config.json of a weights directory, checked for the architecture keys."""
    directory = Path(directory)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise ModelError(
            f"{directory}: missing {', '.join(missing)}; a model directory holds {', '.join(FILES)} (see README, Histopathology)"
        )
    try:
        config = json.loads((directory / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{directory}/config.json is not valid JSON ({exc}); fix the file") from None
    absent = [key for key in REQUIRED_KEYS if key not in config]
    if absent:
        raise ModelError(f"{directory}/config.json lacks {', '.join(absent)}; add the architecture keys")
    if config["image_size"] % config["patch_size"]:
        raise ModelError(
            f"{directory}/config.json: image_size {config['image_size']} is not a multiple of patch_size {config['patch_size']}"
        )
    return config
