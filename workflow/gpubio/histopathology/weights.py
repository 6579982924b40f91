"""The files of a CONCH weights directory, read without torch.

CONCH (Lu et al. 2024) is released as its authors ship it, and read as is::

    pytorch_model.bin                   the state dict of Hugging Face MahmoodLab/CONCH, unchanged
    conch_byte_level_bpe_uncased.json   CONCH's tokenizer, from the CONCH code
                                        (conch/open_clip_custom/tokenizers/)
    conch_ViT-B-16.json                 optional: CONCH's model config, from the same code
                                        (conch/open_clip_custom/model_configs/); without it,
                                        the published one (below)

The Snakefile reads the architecture while it builds the DAG (start-up checks, GPU memory),
so this module stays light; gpubio.histopathology.model builds and loads the network.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpubio.errors import UnusableInput

WEIGHTS_FILE = "pytorch_model.bin"
TOKENIZER_FILE = "conch_byte_level_bpe_uncased.json"
CONFIG_FILE = "conch_ViT-B-16.json"
FILES = (WEIGHTS_FILE, TOKENIZER_FILE)
# CONCH's image statistics (the OpenAI CLIP ones; conch/open_clip_custom/constants.py)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# conch/open_clip_custom/model_configs/conch_ViT-B-16.json as published
PUBLISHED_CONFIG = {
    "embed_dim": 512,
    "embed_dim_caption": 768,
    "vision_cfg": {
        "image_size": 448,
        "patch_size": 16,
        "attentional_pool_caption": True,
        "attentional_pool_contrast": True,
        "attn_pooler_heads": 8,
        "n_queries_contrast": 1,
        "n_queries_caption": 256,
        "output_tokens": True,
    },
    "text_cfg": {
        "context_length": 128,
        "vocab_size": 32007,
        "width": 768,
        "heads": 12,
        "layers": 12,
        "embed_cls": True,
        "output_tokens": True,
    },
    "multimodal_cfg": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12},
    "custom_text": True,
}
# the defaults of CONCH's CoCaVisionCfg and CLIPTextCfg (coca_model.py), for keys a config leaves out
VISION_DEFAULTS = {
    "layers": 12,
    "width": 768,
    "num_heads": 12,
    "mlp_ratio": 4,
    "patch_size": 16,
    "image_size": 224,
    "attentional_pool_contrast": False,
    "attentional_pool_caption": False,
    "n_queries_contrast": 1,
    "n_queries_caption": 256,
    "attn_pooler_heads": 8,
    "output_tokens": False,
}
TEXT_DEFAULTS = {
    "context_length": 77,
    "vocab_size": 49408,
    "width": 512,
    "heads": 8,
    "layers": 12,
    "ls_init_value": None,
    "proj": "mlp",
    "pooler_type": "mean_pooler",
    "embed_cls": False,
    "pad_id": 0,
    "output_tokens": False,
}
TOP_KEYS = {"embed_dim", "embed_dim_caption", "vision_cfg", "text_cfg", "multimodal_cfg", "custom_text"}


class ModelError(UnusableInput):
    """A weights directory that does not hold a loadable model; the message says what to fix."""


def architecture(config: dict, where: str) -> dict:
    """The image and text towers' sizes from a config in CONCH's format (its defaults filled in)."""
    unknown = set(config) - TOP_KEYS
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; is it CONCH's model config?")
    vision, text = {**VISION_DEFAULTS}, {**TEXT_DEFAULTS}
    for name, defaults, given in (
        ("vision_cfg", vision, config.get("vision_cfg")),
        ("text_cfg", text, config.get("text_cfg")),
    ):
        if not isinstance(given, dict):
            raise ModelError(f"{where}: {name} must be an object (CONCH's model config has one)")
        unknown = set(given) - set(defaults)
        if unknown:
            raise ModelError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} in {name}")
        defaults.update(given)
    if "embed_dim" not in config:
        raise ModelError(f"{where}: no embed_dim; copy CONCH's model config (conch_ViT-B-16.json)")
    if not (vision["attentional_pool_contrast"] and vision["n_queries_contrast"] == 1 and text["embed_cls"]):
        raise ModelError(
            f"{where}: not CONCH's architecture (it pools images with one attentional query, "
            "attentional_pool_contrast with n_queries_contrast 1, and text with a class token, embed_cls)"
        )
    if text["ls_init_value"] is not None:
        raise ModelError(f"{where}: text_cfg.ls_init_value (layer scale) is not part of CONCH's architecture")
    if vision["image_size"] % vision["patch_size"]:
        raise ModelError(
            f"{where}: image_size {vision['image_size']} is not a multiple of patch_size {vision['patch_size']}"
        )
    return {
        "image_size": vision["image_size"],
        "patch_size": vision["patch_size"],
        "width": vision["width"],
        "depth": vision["layers"],
        "heads": vision["num_heads"],
        "mlp_ratio": vision["mlp_ratio"],
        "pooler_heads": vision["attn_pooler_heads"],
        "embed_dim": config["embed_dim"],
        "text_width": text["width"],
        "text_depth": text["layers"],
        "text_heads": text["heads"],
        "context_length": text["context_length"],
        "vocab_size": text["vocab_size"],
        "pad_id": text["pad_id"],
    }


def read_model_config(directory) -> dict:
    """The architecture of a CONCH weights directory (its files checked for presence)."""
    directory = Path(directory)
    missing = [name for name in FILES if not (directory / name).is_file()]
    if missing:
        raise ModelError(
            f"{directory}: missing {', '.join(missing)}; a CONCH directory holds {WEIGHTS_FILE} (Hugging Face "
            f"MahmoodLab/CONCH) and {TOKENIZER_FILE} (the CONCH code), see README, Histopathology"
        )
    path = directory / CONFIG_FILE
    if not path.is_file():
        return architecture(PUBLISHED_CONFIG, "CONCH's published model config")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); copy CONCH's model config again") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a model config (a JSON object); copy CONCH's model config again")
    return architecture(config, str(path))
