"""DeepSEA-style chromatin-feature models (Zhou & Troyanskaya 2015; Beluga, Zhou et al. 2018):
a convolutional network over a fixed window predicting one probability per chromatin feature.

A checkpoint is a directory in one of two forms.

Beluga as released (ExPecto's resources, ``deepsea.beluga.pth``): the file is read as is, with
the architecture of its authors' code (ExPecto ``chromatin.py``, class ``Beluga``): a 2,000-bp
window one-hot encoded in A, G, C, T order (N = 0), six 1x8 convolutions with ReLU and a 4x
max-pool after the second and fourth, a dense ReLU layer and the output layer, keys
``model.0.0`` ... ``model.0.14`` and ``model.1.2.1``, ``model.1.4.1``. An optional
``features.txt`` names the 2,002 outputs (one per line); without it they are ``track_<i>``.

gpubio's layout (written by ``scripts/stage-models --convert deepsea`` for the original DeepSEA,
or by hand for another network of this shape):

- ``config.json``: ``window`` (bp), ``conv_layers`` (a list of ``{"channels", "kernel", "pool"}``;
  each layer is conv -> activation -> max-pool of ``pool``, 1 or absent for none), ``hidden`` (units of
  the dense layers before the output layer), and optionally ``alphabet`` (the one-hot
  channel order, default ``"ACGT"``; DeepSEA/Beluga use ``"AGCT"``), ``unknown_base`` (the
  value of all four channels at an N, default 0), ``threshold_value`` (what the activation
  gives for inputs <= 0: 0 is ReLU, DeepSEA 0.94's Torch7 ``nn.Threshold(0, 1e-6)`` gives 1e-6)
  and ``state_dict_keys`` (below).
- ``model.pt``: a torch state dict with ``conv.<i>.weight`` / ``conv.<i>.bias`` per conv layer
  (weights ``(out, in, kernel)``, or Conv2d ``(out, in, 1, kernel)``) and
  ``dense.<j>.weight`` / ``dense.<j>.bias`` per dense layer, the output layer last. The output
  layer gives logits; the sigmoid is applied here. A published state dict can be used as it
  is: ``state_dict_keys`` ``{"conv": [...], "dense": [...]}`` names its layers in order.
- ``features.txt``: one feature name per line, as many as the output layer has units.

Light at import (no torch): the Snakefile reads the VRAM estimate when it builds the DAG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpubio.genomics.inputs import InputError

CONFIG_FILE, WEIGHTS_FILE, FEATURES_FILE = "config.json", "model.pt", "features.txt"
BELUGA_FILE = "deepsea.beluga.pth"
# the layers of ExPecto's Beluga class, as its state dict names them
BELUGA_KEYS = {
    "conv": ["model.0.0", "model.0.2", "model.0.6", "model.0.8", "model.0.12", "model.0.14"],
    "dense": ["model.1.2.1", "model.1.4.1"],
}
LAYOUTS = f"Beluga's {BELUGA_FILE} as released, or {CONFIG_FILE}, {WEIGHTS_FILE} and {FEATURES_FILE}"
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
CUDA_CONTEXT_GB = 1.0
WINDOWS_PER_VARIANT = 4  # ref and alt, each on both strands
# DeepSEA / ExPecto add this to probabilities before taking odds, so a 0 or 1 stays finite
ODDS_EPSILON = 1e-6


@dataclass(frozen=True)
class ConvLayer:
    channels: int
    kernel: int
    pool: int = 1


@dataclass(frozen=True)
class DeepseaConfig:
    window: int
    conv_layers: tuple[ConvLayer, ...]
    hidden: tuple[int, ...]
    alphabet: str = "ACGT"
    unknown_base: float = 0.0
    threshold_value: float = 0.0  # the activation's output for inputs <= 0 (0: ReLU)
    # prefixes of the conv and dense layers in model.pt; empty: conv.<i> and dense.<j>
    conv_keys: tuple[str, ...] = ()
    dense_keys: tuple[str, ...] = ()

    def conv_output_length(self) -> int:
        """Positions left after the convolutions (no padding) and poolings, as DeepSEA's 53."""
        length = self.window
        for layer in self.conv_layers:
            length = (length - layer.kernel + 1) // layer.pool
        return length

    def flat_size(self) -> int:
        return self.conv_layers[-1].channels * self.conv_output_length()


def is_beluga(weights: str | Path) -> bool:
    """Beluga's released file without a config.json of gpubio's layout."""
    return (Path(weights) / BELUGA_FILE).is_file() and not (Path(weights) / CONFIG_FILE).is_file()


def beluga_config(channels: tuple[int, int, int] = (320, 480, 640), hidden: int = 2003) -> DeepseaConfig:
    """Beluga's architecture (ExPecto chromatin.py); the published widths unless the weights say otherwise."""
    a, b, c = channels
    conv = (
        ConvLayer(a, 8),
        ConvLayer(a, 8, 4),
        ConvLayer(b, 8),
        ConvLayer(b, 8, 4),
        ConvLayer(c, 8),
        ConvLayer(c, 8),
    )
    return DeepseaConfig(
        2000, conv, (hidden,), "AGCT", 0.0, 0.0, tuple(BELUGA_KEYS["conv"]), tuple(BELUGA_KEYS["dense"])
    )


def read_config(weights: str | Path) -> DeepseaConfig:
    """The checkpoint's architecture: Beluga's, or its config.json checked (a bad key raises
    InputError naming it)."""
    if is_beluga(weights):
        return beluga_config()
    path = Path(weights) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"{path} is missing; a deepsea checkpoint is {LAYOUTS}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON ({error})") from None
    known = {"window", "conv_layers", "hidden", "alphabet", "unknown_base", "threshold_value", "state_dict_keys"}
    unknown = set(raw) - known
    if unknown:
        raise InputError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; see the README, DeepSEA-style effects")

    def positive_int(value, key: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{path}: {key} must be a positive integer, not {value!r}")
        return value

    window = positive_int(raw.get("window"), "window")
    layers = raw.get("conv_layers")
    if not isinstance(layers, list) or not layers:
        raise InputError(f"{path}: conv_layers must be a non-empty list of {{channels, kernel, pool}}")
    conv = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or set(layer) - {"channels", "kernel", "pool"}:
            raise InputError(f"{path}: conv_layers[{i}] must hold only channels, kernel and pool")
        conv.append(
            ConvLayer(
                positive_int(layer.get("channels"), f"conv_layers[{i}].channels"),
                positive_int(layer.get("kernel"), f"conv_layers[{i}].kernel"),
                positive_int(layer.get("pool", 1), f"conv_layers[{i}].pool"),
            )
        )
    hidden = raw.get("hidden", [])
    if not isinstance(hidden, list):
        raise InputError(f"{path}: hidden must be a list of layer sizes (e.g. [925])")
    hidden = tuple(positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden))
    alphabet = raw.get("alphabet", "ACGT")
    if not isinstance(alphabet, str) or sorted(alphabet) != list("ACGT"):
        raise InputError(f'{path}: alphabet must order the four bases A, C, G, T (e.g. "AGCT"), not {alphabet!r}')
    unknown_base = raw.get("unknown_base", 0.0)
    if not isinstance(unknown_base, (int, float)) or isinstance(unknown_base, bool):
        raise InputError(f"{path}: unknown_base must be a number (0 or 0.25), not {unknown_base!r}")
    threshold_value = raw.get("threshold_value", 0.0)
    if not isinstance(threshold_value, (int, float)) or isinstance(threshold_value, bool):
        raise InputError(f"{path}: threshold_value must be a number (0 for ReLU, 1e-6 for DeepSEA 0.94)")
    keys = raw.get("state_dict_keys", {})
    if keys:
        wanted = {"conv": len(conv), "dense": len(hidden) + 1}
        if (
            not isinstance(keys, dict)
            or set(keys) != set(wanted)
            or any(
                not isinstance(keys[k], list) or len(keys[k]) != n or not all(isinstance(x, str) for x in keys[k])
                for k, n in wanted.items()
            )
        ):
            raise InputError(
                f'{path}: state_dict_keys must be {{"conv": [{len(conv)} layer names], '
                f'"dense": [{len(hidden) + 1} layer names]}}, one per layer of conv_layers and hidden + output'
            )
    config = DeepseaConfig(
        window,
        tuple(conv),
        hidden,
        alphabet,
        float(unknown_base),
        float(threshold_value),
        tuple(keys.get("conv", ())),
        tuple(keys.get("dense", ())),
    )
    if config.conv_output_length() < 1:
        raise InputError(
            f"{path}: a {window}-bp window leaves no positions after conv_layers; check window and kernels"
        )
    return config


def checkpoint_problems(weights: str | Path, config_key: str) -> list[str]:
    """Start-up check of a checkpoint directory without loading torch: one line per problem."""
    weights = Path(weights)
    try:
        read_config(weights)
    except InputError as error:
        return [f"{config_key}: {error}"]
    if is_beluga(weights):
        return []
    return [
        f"{config_key}: {weights / name} is missing; a deepsea checkpoint is {LAYOUTS} (README: DeepSEA-style effects)"
        for name in (WEIGHTS_FILE, FEATURES_FILE)
        if not (weights / name).is_file()
    ]


def features_file(weights: str | Path) -> Path | None:
    """The feature names: features.txt; Beluga as released may go without (None)."""
    path = Path(weights) / FEATURES_FILE
    return None if is_beluga(weights) and not path.is_file() else path


def vram_gb(weights: str | Path, batch_size: int) -> float:
    """GPU memory of scoring: CUDA context, the weights, and the activations of the batch's
    windows (ref and alt on both strands, every conv layer's output held, float32)."""
    weights = Path(weights)
    try:
        config = read_config(weights)
        weights_gb = (weights / WEIGHTS_FILE).stat().st_size / 1e9
    except (InputError, OSError):
        # the start-up check reports the checkpoint; Beluga's size until then
        return round(CUDA_CONTEXT_GB + 0.6 + 0.01 * WINDOWS_PER_VARIANT * batch_size, 1)
    length, values = config.window, 0
    for layer in config.conv_layers:
        length -= layer.kernel - 1
        values += layer.channels * length
        length //= layer.pool
    activations_gb = 4 * values * WINDOWS_PER_VARIANT * batch_size / 1e9
    return round(CUDA_CONTEXT_GB + weights_gb + activations_gb + 0.05, 1)


def one_hot(sequences: list[str], alphabet: str, unknown_base: float) -> np.ndarray:
    """(batch, 4, length) float32 in the checkpoint's channel order; other letters get unknown_base."""
    table = np.full((256, 4), unknown_base, dtype=np.float32)
    for channel, base in enumerate(alphabet):
        table[ord(base)] = table[ord(base.lower())] = np.eye(4, dtype=np.float32)[channel]
    codes = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
    return np.ascontiguousarray(table[codes].reshape(len(sequences), -1, 4).transpose(0, 2, 1))


def reverse_complement(encoded: np.ndarray, alphabet: str) -> np.ndarray:
    """The reverse complement of one-hot windows (batch, 4, length): channels swapped, positions reversed."""
    swap = [alphabet.index(COMPLEMENT[base]) for base in alphabet]
    return np.ascontiguousarray(encoded[:, swap, ::-1])


def log_odds_change(ref: np.ndarray, alt: np.ndarray) -> np.ndarray:
    """logit(alt) - logit(ref), natural log, with DeepSEA's epsilon."""
    e = ODDS_EPSILON
    return np.log((alt + e) * (1 - ref + e)) - np.log((1 - alt + e) * (ref + e))


def _renamed(state: dict, config: DeepseaConfig, path: Path) -> dict:
    """The layers named in state_dict_keys under the layout's conv.<i> / dense.<j> names."""
    renamed = {}
    for kind, prefixes in (("conv", config.conv_keys), ("dense", config.dense_keys)):
        for i, prefix in enumerate(prefixes):
            for part in ("weight", "bias"):
                if f"{prefix}.{part}" not in state:
                    raise InputError(
                        f"{path} has no {prefix}.{part} (state_dict_keys in {CONFIG_FILE}); "
                        f"its keys: {', '.join(list(state)[:12])}"
                    )
                renamed[f"{kind}.{i}.{part}"] = state[f"{prefix}.{part}"]
    return renamed


def build_network(config: DeepseaConfig, outputs: int):
    """The torch module for a config; its state-dict keys are the layout's conv.<i> and dense.<j>."""
    from torch import nn

    class DeepseaNet(nn.Module):
        def __init__(self):
            super().__init__()
            channels = [4] + [layer.channels for layer in config.conv_layers]
            self.conv = nn.ModuleList(
                nn.Conv1d(channels[i], layer.channels, layer.kernel) for i, layer in enumerate(config.conv_layers)
            )
            sizes = [config.flat_size(), *config.hidden, outputs]
            self.dense = nn.ModuleList(nn.Linear(sizes[j], sizes[j + 1]) for j in range(len(sizes) - 1))

        def forward(self, x):  # (batch, 4, window) -> logits (batch, outputs)
            for conv, layer in zip(self.conv, config.conv_layers):
                x = nn.functional.threshold(conv(x), 0.0, config.threshold_value)
                if layer.pool > 1:
                    x = nn.functional.max_pool1d(x, layer.pool)
            x = x.flatten(1)
            for dense in self.dense[:-1]:
                x = nn.functional.threshold(dense(x), 0.0, config.threshold_value)
            return self.dense[-1](x)

    return DeepseaNet()


def _beluga_widths(state: dict, path: Path) -> DeepseaConfig:
    """Beluga's architecture with the widths of the weights (the published ones: 320, 480, 640, 2003)."""
    missing = [f"{k}.weight" for k in BELUGA_KEYS["conv"] + BELUGA_KEYS["dense"] if f"{k}.weight" not in state]
    if missing:
        raise InputError(
            f"{path} is not Beluga's state dict (no {', '.join(missing[:3])}); use deepsea.beluga.pth as "
            "released with ExPecto, or convert other weights (scripts/stage-models --convert deepsea)"
        )
    channels = tuple(int(state[f"model.0.{i}.weight"].shape[0]) for i in (0, 6, 12))
    return beluga_config(channels, int(state["model.1.2.1.weight"].shape[0]))


def load_network(weights: str | Path, device: str):
    """(config, network in eval mode on device, number of outputs) from a checkpoint directory."""
    import torch

    weights = Path(weights)
    config = read_config(weights)
    path = weights / (BELUGA_FILE if is_beluga(weights) else WEIGHTS_FILE)
    if not path.is_file():
        raise InputError(f"{path} is missing; save the state dict there (README: DeepSEA-style effects)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (torch raises many kinds on a damaged file)
        raise InputError(f"{path} cannot be read as a torch state dict ({error}); copy it again") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    described = CONFIG_FILE
    if is_beluga(weights):
        config, described = _beluga_widths(state, path), "Beluga's architecture (2,000-bp window)"
    if config.conv_keys:
        state = _renamed(state, config, path)
    state = {
        k: v.squeeze(2) if k.startswith("conv.") and k.endswith(".weight") and v.dim() == 4 else v
        for k, v in state.items()
    }
    last = f"dense.{len(config.hidden)}.weight"
    if last not in state:
        raise InputError(
            f"{path} has no {last}: {described} names {len(config.hidden)} hidden layer(s), so the output "
            f"layer must be dense.{len(config.hidden)}; keys found: {', '.join(sorted(state)[:8])}"
        )
    first = state.get("dense.0.weight")
    if first is not None and first.shape[1] != config.flat_size():
        raise InputError(
            f"{path}: dense.0 takes {first.shape[1]} inputs but a {config.window}-bp window through conv_layers "
            f"gives {config.flat_size()}; the window or conv layers of {described} do not match the weights"
        )
    outputs = state[last].shape[0]
    network = build_network(config, outputs)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise InputError(f"{path} does not fit {described}: {detail}") from None
    return config, network.eval().to(device), outputs
