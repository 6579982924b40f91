"""Cellpose 3.x and 4.x (Cellpose-SAM) behind one interface: find, load, segment, train.

What differs between the versions (model names, network inputs, training defaults,
restoration) is :mod:`gpubio.imaging.cellpose_api`'s; this module asks it.

``generalist`` names each version's general-purpose built-in model (``cyto3``, ``cpsam``):
what a lab segments with before it trains a model of its own.

Images reach the network already reduced to the configured channels and normalised
(``network_input``), so both versions, the training and every tile of a large image see
the same input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gpubio.imaging.cellpose_api import VERSIONS, ModelError, cellpose_api, installed_major

log = logging.getLogger("gpubio")

GENERALIST = "generalist"
# Cellpose varies the scale and orientation of training crops but not their brightness, so a
# model learnt from a few images misses nuclei brighter or dimmer than those (on a real image,
# the bright small ones): every training image is also given at these contrasts
# (imaging.training.contrast_copies, whose default this is)
CONTRAST_COPIES = (0.5, 2.0)


def import_cellpose() -> ModuleType:
    """The installed cellpose package, with its submodules loaded."""
    import cellpose
    import cellpose.models  # noqa: F401
    import cellpose.train  # noqa: F401

    return cellpose


major_version = installed_major


def builtin_models(cellpose: ModuleType) -> tuple[str, ...]:
    return cellpose_api(cellpose).builtin_models(cellpose)


def generalist_model(cellpose: ModuleType) -> str:
    """The installed version's general-purpose built-in model: cyto3 (3.x) or cpsam (4.x)."""
    return cellpose_api(cellpose).generalist


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
    api = cellpose_api(cellpose)
    builtins = api.builtin_models(cellpose)
    if spec == GENERALIST:
        spec = generalist_model(cellpose)
    path = Path(spec).expanduser()
    if path.is_file():
        return ModelChoice(name=path.name, path=path, builtin=False)
    if spec in builtins:
        basename = api.weight_file(spec)
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
    if spec in api.other_versions_models():
        installed = getattr(cellpose, "version", "?")
        wanted = next(v.label for v in VERSIONS.values() if v is not api)
        raise ModelError(
            f"cellpose model '{spec}' needs cellpose {wanted}, but cellpose {installed} is installed; "
            f"use one of {', '.join(builtins)} or a local model file, or install cellpose {wanted}"
        )
    if os.sep in spec or "/" in spec or path.suffix:
        raise ModelError(
            f"cellpose model file '{spec}' does not exist; fix the path (relative paths are from the working directory)"
        )
    raise ModelError(
        f"unknown cellpose model '{spec}': give {GENERALIST}, a built-in name ({', '.join(builtins)}) "
        "or the path of a model file"
    )


# --------------------------------------------------------------------------- input


def select_channels(image: np.ndarray, channels: tuple[int, int]) -> np.ndarray:
    """(C, Y, X) -> (2, Y, X): [channel to segment, nuclear channel], 1-based, 0 = none.

    Cellpose's convention: the first entry 0 means grayscale (the mean of all channels),
    the second 0 means no nuclear channel (zeros).
    """
    from gpubio.image_io import ImageError

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
        self.api = cellpose_api(self.cellpose)
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
        try:
            return self.api.load(self.cellpose, self.choice, self.device)
        except (OSError, RuntimeError, KeyError) as error:
            raise ModelError(f"cannot load cellpose {self.choice.describe()}: {error}") from error

    def segment(self, x: np.ndarray) -> np.ndarray:
        """Labels (uint32, Y x X) of one (2, Y, X) network input in [0, 1]."""
        if not np.any(x):
            return np.zeros(x.shape[1:], dtype=np.uint32)  # nothing above background: no cells
        labels = self.api.segment(self.model, np.moveaxis(x, 0, -1), self.eval_args)
        return np.asarray(labels, dtype=np.uint32)


# --------------------------------------------------------------------------- training


def read_training_set(
    folder: str | os.PathLike, key: str = "imaging.training.images", mask_suffix: str = "_masks"
) -> list[tuple[Path, Path]]:
    """(image, masks) file pairs in Cellpose's naming: <name>.tif next to <name>_masks.tif.

    `key`: the setting that names the folder, for the error messages."""
    folder = Path(folder)
    kind = "validation" if key.endswith("validation") else "training"
    if not folder.is_dir():
        raise ModelError(f"{kind} folder '{folder}' does not exist; set {key} to a folder of images and masks")
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
            f"{kind} folder '{folder}': no masks for {', '.join(missing)}; "
            f"each image <name>.tif needs <name>{mask_suffix}.tif (a label image) next to it"
        )
    if not pairs:
        raise ModelError(
            f"{kind} folder '{folder}' has no images; put <name>.tif + <name>{mask_suffix}.tif pairs there"
        )
    return pairs


def load_training_set(folder: str | os.PathLike, channels: tuple[int, int], key: str = "imaging.training.images"):
    """(file pairs, network inputs, label images) of a training folder, normalised like segmentation."""
    import tifffile

    from gpubio.image_io import read_image

    pairs = read_training_set(folder, key)
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
    steps: int = 100,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    batch_size: int = 8,
    crop_size: int | None = None,
    object_diameter: float | None = None,
    validation: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: Callable[[Path, int], None] | None = None,
    min_train_masks: int = 1,
    contrast_copies: tuple[float, ...] = CONTRAST_COPIES,
) -> dict:
    """Train a Cellpose model on network inputs (each (2, Y, X) in [0, 1]) and their label images.

    Training lasts `steps` optimiser steps of `batch_size` random crops each, however many
    images there are: Cellpose's epoch is set to one batch (``nimg_per_epoch``), so its
    learning-rate schedule (warm-up, then halving over the last 50 or 100 steps) runs in steps.
    Cellpose 3 trains from scratch when no base model is given, its network sized for
    objects of `object_diameter` px (default: the training objects' median diameter): each
    image is scaled so that its objects have that size, in training and in segmentation alike,
    so one crop size fits small and large nuclei. Cellpose 4 fine-tunes Cellpose-SAM. Settings
    left None take the installed version's defaults (cellpose_api).

    `validation` (images, labels): Cellpose computes its test loss on them (without, its log
    shows test_loss=0). `on_checkpoint(model file, step)` is called every `checkpoint_every`
    steps and at the end, while training goes on, e.g. to score the model on validation images.
    `contrast_copies`: each training image is also trained on multiplied by each of these
    factors (the steps stay the same; a step's crops come from any of the copies).
    Returns the model file, the loss of each step, the training diameter and the settings.
    """
    cellpose = cellpose or import_cellpose()
    api = cellpose_api(cellpose)
    given = {"learning_rate": learning_rate, "weight_decay": weight_decay}
    settings = {k: api.training_defaults[k] if v is None else v for k, v in given.items()}
    diameter = median_diameter(labels)
    model = api.training_model(cellpose, base_model, device, object_diameter or diameter)
    data = [api.training_input(x) for x in images]
    test = [api.training_input(x) for x in validation[0]] if validation else None
    extra = api.training_arguments()
    network_diameter = api.network_diameter(model)
    settings["crop_size"] = crop_size or api.default_crop_size(network_diameter)
    log.info(
        "network: %s, crops of %d px",
        f"cells scaled to {network_diameter:.1f} px" if network_diameter else "Cellpose-SAM",
        settings["crop_size"],
    )
    out_dir = Path(out_dir)
    out_dir.joinpath("models").mkdir(parents=True, exist_ok=True)
    if on_checkpoint is not None:
        _report_checkpoints(model.net, steps, on_checkpoint)
    copies = [1.0, *contrast_copies]
    path, train_losses, test_losses = cellpose.train.train_seg(
        model.net,
        train_data=[x * factor if factor != 1.0 else x for factor in copies for x in data],
        train_labels=[y for _ in copies for y in labels],
        test_data=test,
        test_labels=list(validation[1]) if validation else None,
        normalize=False,
        n_epochs=steps,
        nimg_per_epoch=batch_size,
        learning_rate=settings["learning_rate"],
        weight_decay=settings["weight_decay"],
        batch_size=batch_size,
        bsize=settings["crop_size"],
        save_path=str(out_dir),
        save_every=checkpoint_every or steps,
        save_each=bool(checkpoint_every),
        model_name=model_name,
        min_train_masks=min_train_masks,
        **extra,
    )
    return {
        "model": str(path),
        "losses": [float(v) for v in np.asarray(train_losses).ravel()],
        "validation_losses": _logged_test_losses(test_losses) if validation else [],
        "diameter": diameter,
        "network_diameter": network_diameter,
        "cellpose_major": api.major,
        "contrast_copies": list(contrast_copies),
        **settings,
    }


def _logged_test_losses(losses) -> list[tuple[int, float]]:
    """(step, loss) where Cellpose computed its test loss (steps 6, 11, 21, ...: the rest are 0)."""
    values = np.asarray(losses if losses is not None else []).ravel()
    return [(i + 1, float(v)) for i, v in enumerate(values) if i == 5 or i % 10 == 0]


def _report_checkpoints(net, steps: int, on_checkpoint: Callable[[Path, int], None]) -> None:
    """Make the network hand each model file Cellpose saves to `on_checkpoint`, with its step.

    train_seg saves <name>_epoch_<i> (0-based epoch = step - 1) every `save_every` steps, and
    <name> at the end (twice); each step is reported once, intermediate files are removed
    once reported.
    """
    save, reported = net.save_model, set()

    def save_and_report(filename):
        save(filename)
        path = Path(filename)
        step = int(path.name.rsplit("_epoch_", 1)[1]) + 1 if "_epoch_" in path.name else steps
        if step not in reported:
            reported.add(step)
            on_checkpoint(path, step)
        if "_epoch_" in path.name:
            path.unlink(missing_ok=True)

    net.save_model = save_and_report
