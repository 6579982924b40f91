"""Segment images of any size tile by tile, with overlap, and stitch the labels.

The image is cut into a grid of non-overlapping *cores*; each tile is its core grown by
`overlap` pixels on every side (clipped at the image border). A tile is segmented whole,
and a cell is kept only by the tile whose core holds the cell's centroid, so a cell on a
border is segmented in one piece (by the tile that sees all of it, when `overlap` exceeds
the cell diameter) and counted once. Kept cells get new, global labels. Where a kept cell
meets pixels an earlier tile already labelled, the earlier label stays, and a cell that
would lose most of its pixels that way is a second copy of an existing one and is dropped.

Only one tile is in memory at a time: pixels are read with `TiffImage.region` and labels
written with `LabelImage`, so memory is bounded by the tile size, not the image size.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("gpubio")

FOREGROUND_DIAMETER = 15.0  # px: object size the no-cell check looks for when no diameter is set


@dataclass(frozen=True)
class Tile:
    core: tuple[int, int, int, int]  # y0, y1, x0, x1: the pixels this tile owns
    outer: tuple[int, int, int, int]  # the core plus overlap, clipped: what is segmented


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Cores of at most `tile_size` (evenly split) grown by `overlap`; one tile if the image fits."""
    if tile_size <= 0:
        raise ValueError(f"tile_size must be > 0, got {tile_size}")
    ny, nx = math.ceil(height / tile_size), math.ceil(width / tile_size)
    ys = np.linspace(0, height, ny + 1).round().astype(int)
    xs = np.linspace(0, width, nx + 1).round().astype(int)
    tiles = []
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            outer = (max(0, y0 - overlap), min(height, y1 + overlap), max(0, x0 - overlap), min(width, x1 + overlap))
            tiles.append(Tile(core=(int(y0), int(y1), int(x0), int(x1)), outer=tuple(int(v) for v in outer)))
    return tiles


def label_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label ids, centroid rows, centroid cols) of every nonzero label, from pixel sums."""
    flat = labels.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    counts = np.bincount(flat, minlength=n)
    rows, cols = np.indices(labels.shape)
    sum_r = np.bincount(flat, weights=rows.ravel(), minlength=n)
    sum_c = np.bincount(flat, weights=cols.ravel(), minlength=n)
    ids = np.nonzero(counts)[0]
    ids = ids[ids > 0]
    return ids, sum_r[ids] / counts[ids], sum_c[ids] / counts[ids]


def stitch_tile(
    tile: Tile, local: np.ndarray, existing: np.ndarray, next_label: int, min_free_fraction: float = 0.5
) -> tuple[np.ndarray, int, int]:
    """Merge one tile's labels into what is already written over its outer region.

    Returns (merged block, the next free label, cells added).
    """
    oy, _, ox, _ = tile.outer
    cy0, cy1, cx0, cx1 = tile.core
    ids, rows, cols = label_centroids(local)
    owned = (rows + oy >= cy0) & (rows + oy < cy1) & (cols + ox >= cx0) & (cols + ox < cx1)
    ids = ids[owned]
    if not ids.size:
        return existing, next_label, 0
    n = int(local.max()) + 1
    total = np.bincount(local.ravel(), minlength=n)
    free = np.bincount(local[existing == 0], minlength=n)
    ids = ids[free[ids] >= min_free_fraction * total[ids]]  # drop second copies of written cells
    mapping = np.zeros(n, dtype=np.uint32)
    mapping[ids] = np.arange(next_label, next_label + ids.size, dtype=np.uint32)
    new = mapping[local]
    merged = np.where(existing > 0, existing, new)
    return merged, next_label + int(ids.size), int(ids.size)


def segment_tiled(
    image,
    out,
    segment: Callable[[np.ndarray], np.ndarray],
    tile_size: int,
    overlap: int,
) -> dict:
    """Segment `image` (a TiffImage-like: .shape, .region) into `out` (a LabelImage-like).

    `segment` maps one (C, h, w) block to an (h, w) label image with local labels.
    Returns the number of cells, tiles and the time spent.
    """
    _, height, width = image.shape
    tiles = tile_grid(height, width, tile_size, overlap)
    log.info(
        "segmenting %d x %d px in %d tile(s) (tile %d px, overlap %d px)", height, width, len(tiles), tile_size, overlap
    )
    next_label, start = 1, time.perf_counter()
    for k, tile in enumerate(tiles, start=1):
        y0, y1, x0, x1 = tile.outer
        local = np.asarray(segment(image.region(y0, y1, x0, x1)), dtype=np.uint32)
        if local.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"segmentation returned shape {local.shape} for a tile of {(y1 - y0, x1 - x0)}")
        existing = out.read(y0, y1, x0, x1) if len(tiles) > 1 else np.zeros_like(local)
        merged, next_label, added = stitch_tile(tile, local, existing, next_label)
        if added:
            out.write(y0, x0, merged)
        if len(tiles) > 1:
            log.info("tile %d/%d %s: %d cells kept", k, len(tiles), tile.core, added)
    return {"cells": next_label - 1, "tiles": len(tiles), "seconds": round(time.perf_counter() - start, 3)}


def image_intensity_range(image, image_path, channels: tuple[int, int], footprint=None) -> np.ndarray:
    """Per selected channel (low, high) of a whole TiffImage, read at a stride: one scale for every tile.

    With a `footprint` (a registered image's mask of covered pixels, nonzero = covered),
    only covered pixels count.
    """
    from gpubio.image_io import ImageError, TiffImage
    from gpubio.imaging.cellpose_models import intensity_range, select_channels

    _, height, width = image.shape
    step = max(1, math.ceil(math.sqrt(height * width / 4e6)))  # at most ~4 megapixels sampled
    covered = None
    if footprint is not None:
        mask = TiffImage(footprint)
        if mask.shape[1:] != (height, width):
            raise ImageError(
                f"{footprint}: footprint is {mask.shape[1]} x {mask.shape[2]} px but the image is {height} x {width}; "
                "give the footprint written with this registered image"
            )
        covered = mask.strided(step)[0] > 0
        log.info("normalisation over the registered footprint: %.1f%% of the image", 100 * covered.mean())
        if not covered.any():
            log.warning(
                "%s: the footprint is empty (the image covers none of the reference); using every pixel", footprint
            )
            covered = None
    try:
        selected = select_channels(image.strided(step), channels)
    except ImageError as error:
        raise ImageError(f"{image_path}: {error}; fix imaging.segmentation.channels") from None
    lowhigh = intensity_range(selected, footprint=covered)
    log.info("normalisation (1st, 99th percentile per channel): %s", lowhigh.tolist())
    return lowhigh


def segment_file(
    image_path,
    out_masks,
    segmenter,
    channels: tuple[int, int],
    tile_size: int,
    overlap: int,
    footprint=None,
    diameter: float = 0.0,
) -> dict:
    """Segment a TIFF into a uint32 label TIFF, tile by tile (see module doc).

    The intensity range used to normalise every tile comes from the whole image
    (`image_intensity_range`), so all tiles, and an untiled run, feed the network the same scale.
    A segmented channel without a nonzero pixel is an ImageError. The summary says how many
    objects stand out of the image's background (`foreground_objects`, for objects of about
    `diameter` px; 0 = FOREGROUND_DIAMETER): what a segmentation that found no cell missed,
    and where it is 0, objects the network traced in the noise are dropped (drop_noise_objects).
    """
    from gpubio.atomic import atomic_path
    from gpubio.image_io import ImageError, LabelImage, TiffImage
    from gpubio.imaging.cellpose_models import network_input, select_channels
    from gpubio.imaging.classical import foreground_objects
    from gpubio.imaging.qc import blank_image_message

    image = TiffImage(image_path)
    _, height, width = image.shape
    lowhigh = image_intensity_range(image, image_path, channels, footprint)
    signal = False  # any nonzero pixel in the segmented channel

    def segment(block: np.ndarray) -> np.ndarray:
        nonlocal signal
        selected = select_channels(block, channels)
        signal = signal or bool(selected[0].any())
        return segmenter.segment(network_input(selected, lowhigh))

    with atomic_path(out_masks) as tmp:
        summary = segment_tiled(image, LabelImage(tmp, (height, width)), segment, tile_size, overlap)
        if not signal:
            raise ImageError(
                blank_image_message(image_path, f"channel {channels[0]}" if channels[0] else "every pixel")
            )
    plane, step = _strided_plane(image, channels, footprint)
    summary["foreground_objects"] = foreground_objects(plane, max(2.0, (diameter or FOREGROUND_DIAMETER) / step))
    if summary["cells"] and summary["foreground_objects"] == 0:
        # nothing stands out of this image's background: keep only objects that do themselves
        dropped = drop_noise_objects(out_masks, plane, step)
        if dropped:
            log.info(
                "%s: %d object(s) dropped: no brighter or darker than the image's background noise", image_path, dropped
            )
            summary["cells"] -= dropped
            summary["noise_objects_dropped"] = dropped
    return summary | tiled_run_record(
        image_path, (height, width), channels, tile_size, overlap, lowhigh, footprint, summary["seconds"]
    )


# an object whose mean differs from the background by less than this many noise deviations
# is the noise's own texture (a real cell this faint is not seen by eye either)
MIN_OBJECT_CONTRAST = 1.0


def drop_noise_objects(masks_path, plane: np.ndarray, step: int) -> int:
    """Remove from a label TIFF the objects whose mean intensity is within MIN_OBJECT_CONTRAST
    noise deviations of the background (the pixels outside every object), judged on `plane`,
    the segmented channel read at `step`; the others are relabelled 1..n, window by window in
    the file. Returns how many were removed. For images in which nothing stands out of the
    background (a noise-only field), where a network can still trace a blob in the noise;
    an object too small to be seen at `step` is kept."""
    import tifffile
    from scipy import ndimage

    masks = tifffile.memmap(masks_path, mode="r+")
    seen = np.asarray(masks[::step, ::step])[: plane.shape[0], : plane.shape[1]]
    plane = np.asarray(plane, dtype=np.float64)[: seen.shape[0], : seen.shape[1]]
    background = plane[seen == 0]
    if not background.size:
        return 0
    centre = float(np.median(background))
    noise = 1.4826 * float(np.median(np.abs(background - centre))) or float(np.std(background)) or 1.0
    labels = np.unique(seen[seen > 0])
    means = np.asarray(ndimage.mean(plane, seen, labels))
    faint = labels[np.abs(means - centre) < MIN_OBJECT_CONTRAST * noise]
    if not faint.size:
        return 0
    new = np.zeros(int(masks.max()) + 1, dtype=masks.dtype)  # old label -> new label (0: removed)
    kept = np.setdiff1d(np.arange(1, new.size), faint)
    new[kept] = np.arange(1, kept.size + 1)
    for y0 in range(0, masks.shape[0], 1024):
        masks[y0 : y0 + 1024] = new[masks[y0 : y0 + 1024]]
    masks.flush()
    return int(faint.size)


def no_cell_warning(summary: dict, sample: str) -> str | None:
    """The warning for a segmentation that found no cell where the image shows objects, with what to try."""
    objects = summary.get("foreground_objects", 0)
    if summary["cells"] or not objects:
        return None
    return (
        f"sample {sample}: Cellpose found no cell in {summary['image']}, but {objects} object(s) stand out of its "
        "background; try imaging.segmentation.diameter (the cells' diameter in px; 0 = the model's own), a lower "
        "imaging.segmentation.cellprob_threshold (e.g. -2), the right imaging.segmentation.channels, another "
        "imaging.segmentation.model, or a model trained on a few of these images (model: trained)"
    )


def _strided_plane(image, channels: tuple[int, int], footprint) -> tuple[np.ndarray, int]:
    """The segmented channel read at a stride (at most ~4 megapixels) and that stride; a
    registered image's fill outside its footprint set to the covered pixels' median, so it
    counts as background."""
    from gpubio.image_io import TiffImage
    from gpubio.imaging.cellpose_models import select_channels

    _, height, width = image.shape
    step = max(1, math.ceil(math.sqrt(height * width / 4e6)))
    plane = select_channels(image.strided(step), channels)[0]
    if footprint is not None:
        covered = TiffImage(footprint).strided(step)[0] > 0
        if covered.any():
            plane = np.where(covered, plane, np.median(plane[covered]))
    return plane, step


def tiled_run_record(
    image_path, shape, channels, tile_size: int, overlap: int, lowhigh, footprint, seconds: float
) -> dict:
    """What a tiled pass over an image used and how fast it went (for its JSON record)."""
    return {
        "image": str(image_path),
        "shape": list(shape),
        "channels": list(channels),
        "tile_size": tile_size,
        "tile_overlap": overlap,
        "normalisation": lowhigh.tolist(),
        "footprint": None if footprint is None else str(footprint),
        "megapixels_per_s": round(shape[0] * shape[1] / 1e6 / max(seconds, 1e-9), 4),
    }
