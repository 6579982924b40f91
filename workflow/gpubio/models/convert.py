"""`scripts/stage-models --convert KIND SRC DIR`: released model files into what the workflow reads.

conch    SRC: the downloaded Hugging Face MahmoodLab/CONCH folder (or its pytorch_model.bin),
         with CONCH's tokenizer file somewhere below it (a clone of the CONCH code will do) or
         the CONCH package installed. DIR gets pytorch_model.bin, the tokenizer and, when found,
         CONCH's model config: the released files, gathered and checked by loading them.
deepsea  SRC: Beluga's deepsea.beluga.pth (copied: read as released), or Kipoi's PyTorch port
         of DeepSEA 0.94 (deepsea_variant_effects.pth or deepsea_predict.pth), written as
         gpubio's layout (config.json with DeepSEA's architecture, model.pt, features.txt from
         --features or the predictor_names.txt beside SRC). DeepSEA 0.94's own Torch7 file is
         not read: no maintained Torch7 reader exists; the same weights are in Kipoi's port.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

# Kipoi's DeepSEA ports: nn.Sequential(ReCodeAlphabet(), [ConcatenateRC(),] deepsea_cpu, ...),
# so the network's layers sit under "1." (variantEffects) or "2." (predict)
KIPOI_DEEPSEA_LAYERS = {"conv": ["0", "4", "8"], "dense": ["12.1", "14.1"]}
TORCH7_HINT = (
    "Torch7 files (DeepSEA 0.94's deepsea.cpu) are not read: use Kipoi's PyTorch port of the same weights "
    "(DeepSEA/variantEffects: deepsea_variant_effects.pth) or Beluga's deepsea.beluga.pth"
)


class ConversionError(RuntimeError):
    """The source is not what the converter reads; the message says what to give instead."""


def _copy(src: Path, dest: Path) -> None:
    if not dest.exists() or not src.samefile(dest):
        shutil.copyfile(src, dest)


def _find(root: Path, name: str) -> Path | None:
    if (root / name).is_file():
        return root / name
    return next(iter(sorted(root.rglob(name))), None)


def _conch_package_file(*parts: str) -> Path | None:
    """A file shipped inside an installed CONCH package, without importing it."""
    spec = importlib.util.find_spec("conch")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location).joinpath("open_clip_custom", *parts)
        if path.is_file():
            return path
    return None


def convert_conch(src: str | Path, dest: str | Path, log=print) -> list[str]:
    """Gather CONCH's released files into `dest` and load them once; returns the files written."""
    from gpubio.histopathology.model import load_model
    from gpubio.histopathology.weights import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, ModelError

    src, dest = Path(src), Path(dest)
    if not src.exists():
        raise ConversionError(f"{src}: no such file or directory")
    root = src if src.is_dir() else src.parent
    weights = src if src.is_file() else _find(src, WEIGHTS_FILE)
    if weights is None:
        raise ConversionError(f"{src}: no {WEIGHTS_FILE}; download it from Hugging Face MahmoodLab/CONCH")
    tokenizer = _find(root, TOKENIZER_FILE) or _conch_package_file("tokenizers", TOKENIZER_FILE)
    if tokenizer is None:
        raise ConversionError(
            f"{root}: no {TOKENIZER_FILE}; put CONCH's code (its conch/open_clip_custom/tokenizers/"
            f"{TOKENIZER_FILE}) into {root}, or install the CONCH package"
        )
    config = _find(root, CONFIG_FILE) or _conch_package_file("model_configs", CONFIG_FILE)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path, name in ((weights, WEIGHTS_FILE), (tokenizer, TOKENIZER_FILE), (config, CONFIG_FILE)):
        if path is not None:
            _copy(path, dest / name)
            written.append(name)
            log(f"{path} -> {dest / name}")
    try:
        model = load_model(dest, "cpu")
    except ModelError as error:
        raise ConversionError(str(error)) from None
    a = model.model.architecture
    log(
        f"CONCH loads: ViT {a['depth']} x {a['width']} at {a['image_size']} px, text {a['text_depth']} x "
        f"{a['text_width']}, {a['embed_dim']}-dimensional embeddings"
    )
    return written


def _load_state(path: Path) -> dict:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  (not a torch file: torch raises many kinds)
        raise ConversionError(f"{path} is not a PyTorch state dict; {TORCH7_HINT}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds no state dict; {TORCH7_HINT}")
    return state


def _kipoi_prefix(state: dict) -> str | None:
    layers = KIPOI_DEEPSEA_LAYERS["conv"] + KIPOI_DEEPSEA_LAYERS["dense"]
    for prefix in ("1.", "2.", ""):
        if all(f"{prefix}{layer}.weight" in state for layer in layers):
            return prefix
    return None


def deepsea_config(state: dict, prefix: str) -> dict:
    """DeepSEA 0.94's architecture (Zhou & Troyanskaya 2015, as Kipoi ported it): 1,000 bp in
    A, G, C, T order (N = 0.25 in every channel), three 1x8 convolutions with 4x max-pools after
    the first two, Torch7's Threshold(0, 1e-6) as activation, a dense layer, the output layer.
    The widths come from the weights (published: 320, 480, 960 and 925)."""
    a, b, c = (int(state[f"{prefix}{i}.weight"].shape[0]) for i in KIPOI_DEEPSEA_LAYERS["conv"])
    return {
        "window": 1000,
        "alphabet": "AGCT",
        "unknown_base": 0.25,
        "threshold_value": 1e-6,
        "conv_layers": [
            {"channels": a, "kernel": 8, "pool": 4},
            {"channels": b, "kernel": 8, "pool": 4},
            {"channels": c, "kernel": 8},
        ],
        "hidden": [int(state[f"{prefix}12.1.weight"].shape[0])],
        "state_dict_keys": {
            kind: [f"{prefix}{layer}" for layer in names] for kind, names in KIPOI_DEEPSEA_LAYERS.items()
        },
    }


def convert_deepsea(src: str | Path, dest: str | Path, features: str | Path | None = None, log=print) -> list[str]:
    """Beluga or Kipoi's DeepSEA into `dest`, loaded once; returns the files written."""
    from gpubio.genomics import deepsea
    from gpubio.genomics.effects import _track_names
    from gpubio.genomics.inputs import InputError

    src, dest = Path(src), Path(dest)
    if src.is_dir():
        found = [
            src / n
            for n in (deepsea.BELUGA_FILE, "deepsea_variant_effects.pth", "deepsea_predict.pth")
            if (src / n).is_file()
        ]
        if len(found) != 1:
            raise ConversionError(
                f"{src}: give the weights file itself (found {len(found)} of deepsea.beluga.pth, "
                "deepsea_variant_effects.pth, deepsea_predict.pth)"
            )
        src = found[0]
    if not src.is_file():
        raise ConversionError(f"{src}: no such file")
    names = Path(features) if features else None
    if names is None and (src.parent / "predictor_names.txt").is_file():
        names = src.parent / "predictor_names.txt"
    state = _load_state(src)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    if "model.0.0.weight" in state:  # Beluga: read as released
        _copy(src, dest / deepsea.BELUGA_FILE)
        written.append(deepsea.BELUGA_FILE)
    else:
        prefix = _kipoi_prefix(state)
        if prefix is None:
            raise ConversionError(
                f"{src} is neither Beluga's nor Kipoi's DeepSEA state dict (keys: {', '.join(list(state)[:6])}); "
                "convert other networks by writing config.json with state_dict_keys (README: DeepSEA-style effects)"
            )
        if names is None:
            raise ConversionError(
                f"{src}: give the feature names with --features (Kipoi's DeepSEA predictor_names.txt, one per line)"
            )
        (dest / deepsea.CONFIG_FILE).write_text(json.dumps(deepsea_config(state, prefix), indent=2) + "\n")
        _copy(src, dest / deepsea.WEIGHTS_FILE)
        written += [deepsea.CONFIG_FILE, deepsea.WEIGHTS_FILE]
    if names is not None:
        _copy(names, dest / deepsea.FEATURES_FILE)
        written.append(deepsea.FEATURES_FILE)
    try:
        config, _, outputs = deepsea.load_network(dest, "cpu")
        _track_names(deepsea.features_file(dest), outputs)
    except (InputError, ValueError) as error:
        raise ConversionError(str(error)) from None
    for name in written:
        log(f"wrote {dest / name}")
    log(
        f"DeepSEA-style model loads: {config.window}-bp window, {len(config.conv_layers)} conv layers, {outputs} features"
    )
    return written
