"""Tiles at a chosen resolution over the detected tissue, and reading them from the slide.

Tiles form a grid of `tile_size` px at the target resolution (`target_mpp`), i.e. squares of
round(tile_size * target_mpp / slide_mpp) px at level 0, starting at (0, 0); only whole
tiles inside the slide count. A tile is kept when the tissue mask covers at least
`min_tissue_fraction` of it. Each tile is read from the finest pyramid level that is not
finer than needed, and resized to `tile_size`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gpubio.histopathology.slide import Slide, SlideError

TILE_COLUMNS = ["x", "y", "level", "size_level0", "tissue_fraction"]


def target_mpp(magnification: float | None, mpp: float | None) -> float:
    """Microns per pixel of the tiles: `mpp` when set, else 10 / magnification (20x = 0.5 µm/px)."""
    return float(mpp) if mpp else 10.0 / float(magnification)


def read_level(slide: Slide, downsample: float) -> int:
    """The coarsest level whose downsample does not exceed `downsample` (1% slack for rounding)."""
    fitting = [lvl for lvl in slide.levels if lvl.downsample <= downsample * 1.01]
    return max(fitting, key=lambda lvl: lvl.downsample).index


def tile_grid(
    slide: Slide, mask: np.ndarray, mask_downsample: float, tile_mpp: float, tile_size: int, min_tissue_fraction: float
) -> pd.DataFrame:
    """Kept tiles: level-0 corner (x, y), the level they are read from, their level-0 size
    and the fraction of their area the tissue mask covers."""
    if not slide.mpp:
        raise SlideError(f"{slide.path}: the file does not state microns per pixel; add 'mpp' to its sheet row")
    downsample = tile_mpp / slide.mpp
    if downsample < 0.99:
        raise SlideError(
            f"{slide.path}: tiles at {tile_mpp:g} µm/px are finer than the scan ({slide.mpp:g} µm/px at level 0); "
            "lower histopathology.tiling.magnification (or raise tiling.mpp)"
        )
    size0 = int(round(tile_size * downsample))
    width0, height0 = slide.dimensions
    level = read_level(slide, downsample)
    # the mask pixels whose centres fall inside each tile
    centres_x = (np.arange(mask.shape[1]) + 0.5) * mask_downsample
    centres_y = (np.arange(mask.shape[0]) + 0.5) * mask_downsample
    rows = []
    for y in range(0, height0 - size0 + 1, size0):
        in_y = (centres_y >= y) & (centres_y < y + size0)
        for x in range(0, width0 - size0 + 1, size0):
            in_x = (centres_x >= x) & (centres_x < x + size0)
            window = mask[np.ix_(in_y, in_x)]
            fraction = float(window.mean()) if window.size else 0.0
            if fraction >= min_tissue_fraction:
                rows.append((x, y, level, size0, round(fraction, 4)))
    return pd.DataFrame(rows, columns=TILE_COLUMNS)


def read_tile(slide: Slide, x: int, y: int, level: int, size_level0: int, tile_size: int) -> np.ndarray:
    """One tile as RGB uint8 (tile_size, tile_size, 3): read at `level`, resized to tile_size."""
    from PIL import Image

    downsample = slide.levels[level].downsample
    x_level, y_level = int(round(x / downsample)), int(round(y / downsample))
    side = max(1, int(round(size_level0 / downsample)))
    pixels = slide.region(level, x_level, y_level, side, side)
    if side != tile_size:
        pixels = np.asarray(
            Image.fromarray(pixels).resize(
                (tile_size, tile_size), Image.Resampling.BOX if side > tile_size else Image.Resampling.BILINEAR
            )
        )
    return pixels
