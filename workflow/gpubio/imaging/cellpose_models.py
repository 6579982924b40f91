"""Cellpose 3.x and 4.x (Cellpose-SAM) behind one interface: find, load, segment, train.

The installed major version decides the calls:

- 3.x: a 2-channel network (``nchan=2``); built-in models ``cyto3``, ``nuclei``, ...;
  ``pretrained_model=False`` builds an untrained network, so a model can be trained
  from scratch.
- 4.x: the Cellpose-SAM transformer; no ``channels``/``nchan`` arguments (it reads up to
  three channels as given), one built-in model, ``cpsam``; training starts from it.

Images reach the network already reduced to the configured channels and normalised
(``network_input``), so both versions, the training and every tile of a large image see
the same input.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gpubio.errors import UnusableInput

log = logging.getLogger("gpubio")

# Weight files of the built-in Cellpose 3 models in the model folder (see cellpose.models.model_path)
_V3_WEIGHT_FILES = {"cyto": "cytotorch_0", "cyto2": "cyto2torch_0", "nuclei": "nucleitorch_0"}
V4_BUILTIN = ("cpsam",)
# Each version's own training defaults: Cellpose-SAM is fine-tuned gently, on 256 px crops
TRAINING_DEFAULTS = {
    3: {"learning_rate": 0.005, "weight_decay": 1e-5, "crop_size": 224},
    4: {"learning_rate": 5e-5, "weight_decay": 0.1, "crop_size": 256},
}


class ModelError(UnusableInput):
    """A model cannot be found or loaded; the message says what to do."""


def import_cellpose() -> ModuleType:
    """The installed cellpose package, with its submodules loaded."""
    import cellpose
    import cellpose.models  # noqa: F401
    import cellpose.train  # noqa: F401

    return cellpose


def major_version(cellpose: ModuleType) -> int:
    """3 or 4 (and later): the API generation of an imported cellpose package."""
    text = str(getattr(cellpose, "version", "") or getattr(cellpose, "__version__", ""))
    try:
        major = int(text.split(".")[0])
    except ValueError:
        raise ModelError(f"cannot tell the cellpose version from {text!r}; install cellpose 3.x or 4.x") from None
    if major < 3:
        raise ModelError(f"cellpose {text} is too old: install cellpose 3.x or 4.x")
    return major


def builtin_models(cellpose: ModuleType) -> tuple[str, ...]:
    if major_version(cellpose) >= 4:
        return V4_BUILTIN
    return tuple(dict.fromkeys(getattr(cellpose.models, "MODEL_NAMES", ())))


def model_dir(cellpose: ModuleType) -> Path:
    """Where cellpose keeps (and would download) built-in weights; $CELLPOSE_LOCAL_MODELS_PATH sets it."""
    return Path(getattr(cellpose.models, "MODEL_DIR", Path.home() / ".cellpose" / "models"))


@dataclass(frozen=True)
class ModelChoice:
    """A resolved model: a built-in name (weights cached locally) or a model file."""

    name: str
    path: Path | None  # the weights file
    builtin: bool

    def describe(self) -> str:
        return f"built-in model '{self.name}' ({self.path})" if self.builtin else f"model file {self.path}"


def resolve_model(spec: str, cellpose: ModuleType, allow_download: bool = False) -> ModelChoice:
    """Turn a config value (built-in name or file path) into a model, or raise ModelError.

    Offline machines cannot fetch built-in weights: unless `allow_download`, a built-in
    name whose weights are not in the local model folder is an error naming the file
    and the fixes.
    """
    major = major_version(cellpose)
    builtins = builtin_models(cellpose)
    path = Path(spec).expanduser()
    if path.is_file():
        return ModelChoice(name=path.name, path=path, builtin=False)
    if spec in builtins:
        basename = spec if major >= 4 else _V3_WEIGHT_FILES.get(spec, spec)
        weights = model_dir(cellpose) / basename
        if not weights.is_file() and not allow_download:
            raise ModelError(
                f"cellpose model '{spec}' needs its weights file '{basename}' in the local model folder "
                f"{model_dir(cellpose)}, and it is not there (this step does not download). Copy the file there "
                "from a machine with internet (or point $CELLPOSE_LOCAL_MODELS_PATH at a folder that has it), "
                "set imaging.segmentation.model to a local model file, or set "
                "imaging.segmentation.download_models: true where downloads work"
            )
        return ModelChoice(name=spec, path=weights, builtin=True)
    other = V4_BUILTIN if major < 4 else tuple(_V3_WEIGHT_FILES) + ("cyto3",)
    if spec in other:
        installed = getattr(cellpose, "version", "?")
        wanted = "4.x (Cellpose-SAM)" if major < 4 else "3.x"
        raise ModelError(
            f"cellpose model '{spec}' needs cellpose {wanted}, but cellpose {installed} is installed; "
            f"use one of {', '.join(builtins)} or a local model file, or install cellpose {wanted}"
        )
    if os.sep in spec or "/" in spec or path.suffix:
        raise ModelError(
            f"cellpose model file '{spec}' does not exist; fix the path (relative paths are from the working directory)"
        )
    raise ModelError(
        f"unknown cellpose model '{spec}': give a built-in name ({', '.join(builtins)}) or the path of a model file"
    )


# --------------------------------------------------------------------------- input


def select_channels(image: np.ndarray, channels: tuple[int, int]) -> np.ndarray:
    """(C, Y, X) -> (2, Y, X): [channel to segment, nuclear channel], 1-based, 0 = none.

    Cellpose's convention: the first entry 0 means grayscale (the mean of all channels),
    the second 0 means no nuclear channel (zeros).
    """
    from gpubio.imaging.io import ImageError

    seg, nuc = channels
    for value in channels:
        if not 0 <= value <= image.shape[0]:
            raise ImageError(
                f"channel {value} does not exist: the image has {image.shape[0]} channel(s) "
                "(channels are 1-based; 0 means grayscale / none)"
            )
    first = image.mean(axis=0) if seg == 0 else image[seg - 1]
    second = image[nuc - 1] if nuc else np.zeros(image.shape[1:])
    return np.stack([first, second]).astype(np.float32)


def intensity_range(selected: np.ndarray, percentiles=(1.0, 99.0), footprint: np.ndarray | None = None) -> np.ndarray:
    """Per-channel (low, high) of a (2, Y, X) selection: the normalisation of one image.

    `footprint` (Y, X bool) limits the percentiles to the pixels the image really covers
    (after registration, the zero fill outside it would pull the low end to 0).
    """
    if footprint is not None:
        selected = selected[:, footprint]
    return np.stack([np.percentile(c, percentiles) for c in selected]).astype(np.float32)


def network_input(selected: np.ndarray, lowhigh: np.ndarray) -> np.ndarray:
    """Scale each selected channel to [0, 1] at its (low, high); a channel without range stays 0."""
    out = np.zeros_like(selected, dtype=np.float32)
    for c, (low, high) in enumerate(lowhigh):
        if high - low > 1e-6 * max(1.0, abs(high)):
            out[c] = (selected[c] - low) / (high - low)
    return out


# --------------------------------------------------------------------------- segmentation


class CellposeSegmenter:
    """One loaded model, segmenting (2, Y, X) network inputs into label images."""

    def __init__(
        self,
        choice: ModelChoice,
        device: Any,
        cellpose: ModuleType | None = None,
        diameter: float = 0.0,
        flow_threshold: float = 0.4,
        cellprob_threshold: float = 0.0,
        batch_size: int = 8,
        min_size: int = 15,
    ):
        self.cellpose = cellpose or import_cellpose()
        self.major = major_version(self.cellpose)
        self.choice = choice
        self.device = device
        self.eval_args = dict(
            diameter=diameter or None,
            flow_threshold=flow_threshold,
            cellprob_threshold=cellprob_threshold,
            batch_size=batch_size,
            min_size=min_size,
        )
        self.model = self._load()

    def _load(self):
        gpu = getattr(self.device, "type", str(self.device)) != "cpu"
        CellposeModel = self.cellpose.models.CellposeModel
        try:
            if self.major >= 4:
                return CellposeModel(gpu=gpu, device=self.device, pretrained_model=str(self.choice.path))
            if self.choice.builtin:
                return CellposeModel(gpu=gpu, device=self.device, model_type=self.choice.name, nchan=2)
            return CellposeModel(gpu=gpu, device=self.device, pretrained_model=str(self.choice.path), nchan=2)
        except (OSError, RuntimeError, KeyError) as error:
            raise ModelError(f"cannot load cellpose {self.choice.describe()}: {error}") from error

    def segment(self, x: np.ndarray) -> np.ndarray:
        """Labels (uint32, Y x X) of one (2, Y, X) network input in [0, 1]."""
        if not np.any(x):
            return np.zeros(x.shape[1:], dtype=np.uint32)  # nothing above background: no cells
        image = np.moveaxis(x, 0, -1)
        if self.major >= 4:
            # Cellpose-SAM reads up to 3 channels as given: pad to 3, no `channels` argument
            image = np.concatenate([image, np.zeros(image.shape[:2] + (1,), image.dtype)], axis=-1)
            result = self.model.eval(image, channel_axis=-1, normalize=False, **self.eval_args)
        else:
            result = self.model.eval(image, channels=[1, 2], channel_axis=-1, normalize=False, **self.eval_args)
        return np.asarray(result[0], dtype=np.uint32)


# --------------------------------------------------------------------------- training


def read_training_set(folder: str | os.PathLike, mask_suffix: str = "_masks") -> list[tuple[Path, Path]]:
    """(image, masks) file pairs in Cellpose's naming: <name>.tif next to <name>_masks.tif."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(
            f"training folder '{folder}' does not exist; set imaging.training.images to a folder of images and masks"
        )
    pairs, missing = [], []
    for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff")):
        stem = image.name[: -len(".ome.tif")] if image.name.lower().endswith(".ome.tif") else image.stem
        if stem.endswith(mask_suffix):
            continue
        masks = [image.with_name(stem + mask_suffix + ext) for ext in (".tif", ".tiff", ".png")]
        found = next((m for m in masks if m.is_file()), None)
        if found is None:
            missing.append(image.name)
        else:
            pairs.append((image, found))
    if missing:
        raise ModelError(
            f"training folder '{folder}': no masks for {', '.join(missing)}; "
            f"each image <name>.tif needs <name>{mask_suffix}.tif (a label image) next to it"
        )
    if not pairs:
        raise ModelError(
            f"training folder '{folder}' has no images; put <name>.tif + <name>{mask_suffix}.tif pairs there"
        )
    return pairs


def load_training_set(folder: str | os.PathLike, channels: tuple[int, int]):
    """(file pairs, network inputs, label images) of a training folder, normalised like segmentation."""
    import tifffile

    from gpubio.imaging.io import read_image

    pairs = read_training_set(folder)
    images, labels = [], []
    for image_path, mask_path in pairs:
        selected = select_channels(read_image(str(image_path))[0], channels)
        images.append(network_input(selected, intensity_range(selected)))
        labels.append(tifffile.imread(mask_path).astype(np.int32))
    return pairs, images, labels


def median_diameter(labels: list[np.ndarray]) -> float:
    """Median equivalent-circle diameter of all labelled objects (Cellpose's size measure)."""
    areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in labels])
    areas = areas[areas > 0]
    if not areas.size:
        raise ModelError("the training masks contain no labelled objects")
    return float(np.median(np.sqrt(areas / np.pi) * 2))


def train_model(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    out_dir: str | os.PathLike,
    model_name: str,
    device: Any,
    base_model: ModelChoice | None = None,
    cellpose: ModuleType | None = None,
    epochs: int = 100,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 8,
    crop_size: int | None = None,
    min_train_masks: int = 1,
    checkpoint_every: int = 0,
) -> dict:
    """Train a Cellpose model on network inputs (each (2, Y, X) in [0, 1]) and their label images.

    Cellpose 3 trains from scratch when no base model is given (the network's size is
    set to the training objects' median diameter, so nothing is rescaled); Cellpose 4
    fine-tunes Cellpose-SAM. Settings left None take the installed version's defaults
    (TRAINING_DEFAULTS). `checkpoint_every` > 0 also keeps the model every that many epochs.
    Returns the model file, losses, the training diameter, the settings and any checkpoints.
    """
    cellpose = cellpose or import_cellpose()
    major = major_version(cellpose)
    given = {"learning_rate": learning_rate, "weight_decay": weight_decay, "crop_size": crop_size}
    settings = {k: TRAINING_DEFAULTS[min(major, 4)][k] if v is None else v for k, v in given.items()}
    gpu = getattr(device, "type", str(device)) != "cpu"
    CellposeModel = cellpose.models.CellposeModel
    diameter = median_diameter(labels)
    if major >= 4:
        start = base_model.path if base_model else model_dir(cellpose) / "cpsam"
        model = CellposeModel(gpu=gpu, device=device, pretrained_model=str(start))
        data = [np.concatenate([x, np.zeros((1,) + x.shape[1:], x.dtype)]) for x in images]
        extra = {}
    else:
        if base_model is None:
            model = CellposeModel(gpu=gpu, device=device, pretrained_model=False, nchan=2, diam_mean=diameter)
        elif base_model.builtin:
            model = CellposeModel(gpu=gpu, device=device, model_type=base_model.name, nchan=2)
        else:
            model = CellposeModel(gpu=gpu, device=device, pretrained_model=str(base_model.path), nchan=2)
        data = list(images)
        extra = {"channels": None}
    out_dir = Path(out_dir)
    out_dir.joinpath("models").mkdir(parents=True, exist_ok=True)
    path, train_losses, _ = cellpose.train.train_seg(
        model.net,
        train_data=data,
        train_labels=labels,
        normalize=False,
        n_epochs=epochs,
        learning_rate=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        batch_size=batch_size,
        bsize=settings["crop_size"],
        save_path=str(out_dir),
        save_every=checkpoint_every or max(epochs, 1),
        save_each=bool(checkpoint_every),
        model_name=model_name,
        min_train_masks=min_train_masks,
        **extra,
    )
    return {
        "model": str(path),
        "checkpoints": sorted(str(p) for p in Path(path).parent.glob(f"{model_name}_epoch_*")),
        "losses": [float(v) for v in np.asarray(train_losses).ravel()],
        "diameter": diameter,
        "cellpose_major": major,
        **settings,
    }
