"""Tissue detection on a slide's thumbnail: Otsu on saturation, then morphological clean-up.

Glass and background are white or grey (saturation near 0); stained tissue is coloured.
"""

from __future__ import annotations

import numpy as np


def detect_tissue(
    thumbnail: np.ndarray, thumbnail_mpp: float | None, min_saturation: float = 0.05, min_area_um2: float = 10000.0
) -> tuple[np.ndarray, float]:
    """Tissue mask (bool, thumbnail shape) and the saturation threshold used.

    The threshold is Otsu's on the saturation, never below `min_saturation` (a slide with
    no tissue would otherwise split its background noise in two). Closing joins a
    tissue piece broken by pale streaks, holes are filled (lumina, fat), and pieces smaller
    than `min_area_um2` (dust, pen specks) are dropped.
    """
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    saturation = rgb2hsv(thumbnail[..., :3])[..., 1]
    threshold = min_saturation
    if saturation.max() > saturation.min():
        threshold = max(float(threshold_otsu(saturation)), min_saturation)
    mask = saturation > threshold
    # pad so that closing does not erode tissue touching the slide's edge
    mask = ndimage.binary_closing(np.pad(mask, 2, mode="edge"), structure=disk(2))[2:-2, 2:-2]
    mask = ndimage.binary_fill_holes(mask)
    if thumbnail_mpp:
        min_pixels = int(min_area_um2 / thumbnail_mpp**2)
        pieces, count = ndimage.label(mask)
        sizes = np.bincount(pieces.ravel(), minlength=count + 1)
        keep = sizes >= min_pixels
        keep[0] = False
        mask = keep[pieces]
    return mask.astype(bool), threshold
