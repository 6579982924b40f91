"""Cellpose 3 image restoration (denoise, deblur, upsample) before segmentation, tile by tile.

The restoration network sees what the segmentation network sees: the configured channels,
normalised with one intensity range for the whole image (see `tiling.image_intensity_range`),
so every tile and an untiled run restore on the same scale. Each tile is restored with
`overlap` pixels of context on every side and only its core is kept, so the restored image
has no seams wherever the network's reach is within the overlap.

The restored image keeps the input's pixel grid (masks made from it line up with the raw
image, which the features step measures) and the network's scale: 0 = the 1st and
1 = the 99th percentile of the input. Channel 1 is the restored segmentation channel,
channel 2 the restored nuclear channel when one is configured.

Cellpose 4 (Cellpose-SAM) has no restoration models; only Cellpose 3.x restores.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from gpubio.imaging.cellpose_models import (
    ModelChoice,
    ModelError,
    major_version,
    model_dir,
)

log = logging.getLogger("gpubio")

# cellpose.denoise.MODEL_NAMES of Cellpose 3.1, spelled out so the start-up check needs no cellpose import
BUILTIN_RESTORATION_MODELS = tuple(
    [f"{kind}_cyto3" for kind in ("denoise", "deblur", "upsample", "oneclick")]
    + [
        name
        for cell in ("cyto2", "nuclei")
        for kind in ("denoise", "deblur", "upsample", "oneclick")
        for name in (f"{kind}_{cell}", *(f"{kind}_{loss}_{cell}" for loss in ("per", "seg", "rec")))
    ]
    + ["aniso_cyto2", "aniso_nuclei"]
)
NO_RESTORATION_IN_CELLPOSE_4 = "Cellpose 4 (Cellpose-SAM) has no restoration models"


def restoration_model_problem(spec: str, cellpose_major: int) -> str | None:
    """Why a restoration model setting cannot work (without touching files), or None."""
    from gpubio.imaging.cellpose_api import cellpose_api

    if not cellpose_api(cellpose_major).restoration:
        return f"{NO_RESTORATION_IN_CELLPOSE_4}; install cellpose 3.x or turn imaging.restoration.enabled off"
    looks_like_path = "/" in spec or "\\" in spec or bool(Path(spec).suffix)
    if spec not in BUILTIN_RESTORATION_MODELS and not looks_like_path:
        return (
            f"unknown restoration model '{spec}': give a Cellpose 3 restoration model "
            "(denoise_cyto3, deblur_cyto3, upsample_cyto3, oneclick_cyto3, ... _nuclei, _cyto2) "
            "or the path of a restoration model file"
        )
    return None


def resolve_restoration_model(spec: str, cellpose: ModuleType, allow_download: bool = False) -> ModelChoice:
    """A restoration model file, or a built-in name whose weights are in Cellpose's model folder.

    Built-in restoration weights are files named like the model (``denoise_cyto3``) in the
    folder Cellpose downloads to; unless `allow_download`, a missing one is an error naming
    the file and the fixes (this step does not download).
    """
    from gpubio.imaging.cellpose_api import cellpose_api

    path = Path(spec).expanduser()
    problem = restoration_model_problem(spec, major_version(cellpose))
    if problem and (not cellpose_api(cellpose).restoration or not path.is_file()):  # a file may have any name
        raise ModelError(problem)
    if path.is_file():
        return ModelChoice(name=path.name, path=path, builtin=False)
    if spec not in BUILTIN_RESTORATION_MODELS:
        raise ModelError(
            f"restoration model file '{spec}' does not exist; fix imaging.restoration.model (relative paths are from the working directory)"
        )
    weights = model_dir(cellpose) / spec
    if not weights.is_file() and not allow_download:
        raise ModelError(
            f"restoration model '{spec}' needs its weights file '{spec}' in the local model folder {model_dir(cellpose)}, "
            "and it is not there (this step does not download). Copy the file there from a machine with internet "
            "(or point $CELLPOSE_LOCAL_MODELS_PATH at a folder that has it), set imaging.restoration.model to a local "
            "model file, or set imaging.segmentation.download_models: true where downloads work"
        )
    return ModelChoice(name=spec, path=weights, builtin=True)


class CellposeRestorer:
    """One loaded restoration network, restoring (C, Y, X) network inputs channel by channel."""

    def __init__(self, choice: ModelChoice, device: Any, cellpose: ModuleType, diameter: float = 0.0):
        import importlib

        self.choice = choice
        self.diameter = diameter or None
        gpu = getattr(device, "type", str(device)) != "cpu"
        # the built-in networks were trained at 30 px cells (17 px for the nuclei ones)
        diam_mean = 17.0 if "nuclei" in choice.name else 30.0
        DenoiseModel = importlib.import_module(f"{cellpose.__name__}.denoise").DenoiseModel
        try:
            if choice.builtin and not choice.path.is_file():  # download_models: cellpose fetches it
                self.model = DenoiseModel(gpu=gpu, device=device, model_type=choice.name)
            else:  # a path that exists never triggers a download
                self.model = DenoiseModel(
                    gpu=gpu, device=device, pretrained_model=str(choice.path), diam_mean=diam_mean
                )
        except (OSError, RuntimeError, KeyError, AssertionError) as error:
            raise ModelError(f"cannot load restoration {choice.describe()}: {error}") from error

    def _block_size(self, shape: tuple[int, int]) -> int:
        """One network pass per tile: Cellpose's own 224 px blocks would blend into seams.

        The tile is rescaled by diam_mean / diameter first (twice for upsample models).
        """
        scale = 1.0
        if self.diameter:
            scale = max(1.0, self.model.diam_mean / self.diameter) ** (2 if "upsample" in str(self.choice.path) else 1)
        return math.ceil(max(shape) * scale) + 64

    def restore(self, x: np.ndarray) -> np.ndarray:
        """Restored (C, Y, X) of a (C, Y, X) network input; an empty channel (no nuclei) stays empty."""
        out = np.zeros(x.shape, dtype=np.float32)
        for c, channel in enumerate(x):
            if not np.any(channel):
                continue
            restored = self.model.eval(
                channel.astype(np.float32),
                channels=None,
                normalize=False,
                diameter=self.diameter,
                bsize=self._block_size(channel.shape),
            )
            restored = np.asarray(restored, dtype=np.float32)[..., 0]
            if restored.shape != channel.shape:  # upsample models: back onto the input's pixel grid
                from cellpose import transforms

                restored = transforms.resize_image(restored, Ly=channel.shape[0], Lx=channel.shape[1])
            out[c] = restored
        return out


class ChannelImage:
    """A float32 (C, Y, X) TIFF written one window at a time (memory-mapped, created at full size)."""

    def __init__(self, path, shape: tuple[int, int, int]):
        import tifffile

        self.path = str(path)
        self.shape = tuple(int(v) for v in shape)
        self._map = tifffile.memmap(
            self.path, shape=self.shape, dtype=np.float32, photometric="minisblack", metadata={"axes": "CYX"}
        )

    def write(self, y0: int, x0: int, block: np.ndarray) -> None:
        self._map[:, y0 : y0 + block.shape[1], x0 : x0 + block.shape[2]] = block

    def close(self) -> None:
        self._map.flush()
        del self._map


def restore_tiled(image, out, restore, tile_size: int, overlap: int) -> dict:
    """Restore `image` (TiffImage-like) into `out` (ChannelImage-like), keeping each tile's core.

    `restore` maps one (C, h, w) block to its restored (C', h, w).
    """
    from gpubio.imaging.tiling import tile_grid

    _, height, width = image.shape
    tiles = tile_grid(height, width, tile_size, overlap)
    log.info(
        "restoring %d x %d px in %d tile(s) (tile %d px, overlap %d px)", height, width, len(tiles), tile_size, overlap
    )
    start = time.perf_counter()
    for k, tile in enumerate(tiles, start=1):
        y0, y1, x0, x1 = tile.outer
        restored = restore(image.region(y0, y1, x0, x1))
        cy0, cy1, cx0, cx1 = tile.core
        out.write(cy0, cx0, restored[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0])
        if len(tiles) > 1:
            log.info("tile %d/%d %s restored", k, len(tiles), tile.core)
    return {"tiles": len(tiles), "seconds": round(time.perf_counter() - start, 3)}


def restore_file(
    image_path, out_image, restorer, channels: tuple[int, int], tile_size: int, overlap: int, footprint=None
) -> dict:
    """Restore a TIFF's segmentation (and nuclear) channel into a float32 TIFF (see module doc)."""
    from gpubio.atomic import atomic_path
    from gpubio.image_io import TiffImage
    from gpubio.imaging.cellpose_models import network_input, select_channels
    from gpubio.imaging.tiling import image_intensity_range, tiled_run_record

    image = TiffImage(image_path)
    _, height, width = image.shape
    lowhigh = image_intensity_range(image, image_path, channels, footprint)
    nchan = 2 if channels[1] else 1

    def restore(block: np.ndarray) -> np.ndarray:
        return restorer.restore(network_input(select_channels(block, channels), lowhigh)[:nchan])

    with atomic_path(out_image) as tmp:
        out = ChannelImage(tmp, (nchan, height, width))
        try:
            summary = restore_tiled(image, out, restore, tile_size, overlap)
        finally:
            out.close()
    record = tiled_run_record(
        image_path, (height, width), channels, tile_size, overlap, lowhigh, footprint, summary["seconds"]
    )
    return summary | record | {"restored_channels": nchan}


def write_restoration_png(path, raw_path, restored_path, channels: tuple[int, int], lowhigh, title: str) -> None:
    """Raw (normalised like the network input) and restored segmentation channel side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path
    from gpubio.image_io import TiffImage
    from gpubio.imaging.cellpose_models import network_input, select_channels

    raw, restored = TiffImage(raw_path), TiffImage(restored_path)
    step = max(1, math.ceil(max(raw.shape[1:]) / 1000))  # a figure, not the data: ~1000 px a side
    before = network_input(select_channels(raw.strided(step), channels), np.asarray(lowhigh, np.float32))[0]
    after = restored.strided(step)[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, panel, name in ((axes[0], before, "raw"), (axes[1], after, "restored")):
        ax.imshow(panel, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
