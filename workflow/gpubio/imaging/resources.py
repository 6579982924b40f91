"""GPU memory and RAM the imaging steps need, for the rules' `resources:`.

Light on purpose (no torch, no cellpose import): the Snakefile evaluates these when it
builds the DAG. Estimates, rounded up generously; a job that still runs out of memory is
retried on the next larger GPU by the placement's escalation.
"""

from __future__ import annotations

from importlib import metadata

CUDA_CONTEXT_GB = 1.0
BYTES_PER_TILE_PIXEL = 64  # flows, cell probability, pixel positions and labels of one tile (float32)


def installed_cellpose_major(default: int = 3) -> int:
    try:
        return int(metadata.version("cellpose").split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return default


def cellpose_vram_gb(tile_size: int, batch_size: int, model: str = "", major: int | None = None) -> float:
    """VRAM of Cellpose inference on tiles of `tile_size` px with `batch_size` network patches.

    The network runs `batch_size` patches (224 px for Cellpose 3, 256 px for Cellpose-SAM)
    at once: ~0.15 GB each for the Cellpose 3 U-net, ~0.6 GB each for the Cellpose-SAM
    transformer (plus its 1.2 GB of weights); the mask reconstruction then holds the
    whole tile's flows on the GPU.
    """
    vram = _cellpose(model, major).inference_vram_gb
    weights, per_patch = vram["weights"], vram["per_patch"]
    tile = tile_size * tile_size * BYTES_PER_TILE_PIXEL / 1e9
    return round(CUDA_CONTEXT_GB + weights + per_patch * batch_size + tile, 1)


def cellpose_training_vram_gb(
    crop_size: int | None, batch_size: int, model: str = "", major: int | None = None
) -> float:
    """VRAM of Cellpose training: activations and gradients of `batch_size` crops.

    `crop_size` None (the config's default) is the installed Cellpose's own: 224 px (3.x), 256 px (4.x).
    """
    api = _cellpose(model, major)
    crop_size = crop_size or api.training_defaults["crop_size"]
    per_crop = api.training_vram_gb["per_crop"] * (crop_size / 224) ** 2
    return round(CUDA_CONTEXT_GB + api.training_vram_gb["weights"] + per_crop * batch_size, 1)


def _cellpose(model: str, major: int | None):
    """The adapter of the Cellpose version a model runs on (cpsam: 4.x, else the installed one)."""
    from gpubio.imaging.cellpose_api import cellpose_api

    return cellpose_api(4 if model == "cpsam" else (major or installed_cellpose_major()))


# Cellpose 3 restoration network over one whole tile: ~1.7 kB of activations per pixel,
# measured on the CPU (1 x 256^2 and 1 x 512^2 passes: +160 MB and +485 MB peak RSS)
RESTORATION_BYTES_PER_PIXEL = 2500


def restoration_vram_gb(tile_size: int, overlap: int) -> float:
    """VRAM of restoration: one network pass over a tile and its overlap (no batching of patches).

    Images whose cells are rescaled (imaging.segmentation.diameter below the model's 30 px)
    are larger on the network side; the placement's escalation covers that on retry.
    """
    pixels = (tile_size + 2 * overlap) ** 2
    return round(CUDA_CONTEXT_GB + 0.1 + pixels * RESTORATION_BYTES_PER_PIXEL / 1e9, 1)


def restoration_mem_mb(tile_size: int, overlap: int) -> int:
    """RAM of restoration: libraries (~0.6 GB measured) plus the CPU path's pass over one tile."""
    return int(1000 + (tile_size + 2 * overlap) ** 2 * RESTORATION_BYTES_PER_PIXEL / 1e6)


def registration_vram_gb(size_mb: float) -> float:
    """VRAM of learned registration: the image pair and ~40 float32 copies for the optimisation."""
    return round(CUDA_CONTEXT_GB + 40 * 2 * size_mb / 1000, 1)


def cellpose_mem_mb(tile_size: int) -> int:
    """RAM of tiled segmentation: libraries and model, plus one tile's pixels, flows and labels.

    Measured on the CPU (bench/imaging.py): 1.3 GB peak with 1k tiles, 1.5 GB with 2k tiles,
    whatever the image size; this asks for about 1.6 x that.
    """
    return int(2000 + tile_size * tile_size * 100 / 1e6)


def registration_mem_mb(size_mb: float) -> int:
    """RAM of registration: libraries plus float32 working copies (~15 x the 16-bit input pair)."""
    return int(1500 + 15 * size_mb)
