"""Classical nucleus segmentation: Otsu's threshold and a distance-transform watershed.

It is the baseline a trained Cellpose model has to beat on the validation images, and the
check that an image in which Cellpose found no cell really shows nothing to find.
"""

from __future__ import annotations

import numpy as np

# Foreground that stands out from the background by this many noise standard deviations
# (median against median, the noise from the background's MAD) is signal; a threshold
# through pure noise separates its halves by about 1.
MIN_CONTRAST = 5.0


def _smoothed(image: np.ndarray, diameter: float) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(np.asarray(image, dtype=np.float32), max(1.0, diameter / 24))


def otsu_watershed(image: np.ndarray, diameter: float) -> np.ndarray:
    """Labels (int32) of a 2D image: Otsu foreground, split by a watershed of its distance
    transform seeded at peaks at least a quarter of `diameter` (the objects' size in px) apart."""
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    smooth = _smoothed(image, diameter)
    if np.ptp(smooth) <= 1e-6 * max(1.0, float(np.abs(smooth).max())):
        return np.zeros(smooth.shape, np.int32)
    foreground = ndimage.binary_fill_holes(smooth > threshold_otsu(smooth))
    parts, n = ndimage.label(foreground)
    small = np.bincount(parts.ravel())[1:] < np.pi * (diameter / 6) ** 2  # specks: under a third of the diameter
    foreground &= ~np.concatenate([[True], small])[parts]
    distance = gaussian(ndimage.distance_transform_edt(foreground), max(1.0, diameter / 24))
    peaks = peak_local_max(
        distance, min_distance=max(1, round(diameter / 4)), labels=ndimage.label(foreground)[0], exclude_border=False
    )
    markers = np.zeros(smooth.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def foreground_objects(image: np.ndarray, diameter: float) -> int:
    """How many objects of at least a third of `diameter` stand out of a 2D image's
    background (Otsu's threshold, and a contrast of MIN_CONTRAST noise deviations); 0 for
    a blank, flat or noise-only image."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    smooth = _smoothed(image, diameter)
    if np.ptp(smooth) <= 1e-6 * max(1.0, float(np.abs(smooth).max())):
        return 0
    foreground = smooth > threshold_otsu(smooth)
    background = image[~foreground]
    if not foreground.any() or not background.size:
        return 0
    noise = 1.4826 * np.median(np.abs(background - np.median(background)))
    contrast = (np.median(image[foreground]) - np.median(background)) / max(float(noise), 1e-6)
    if contrast < MIN_CONTRAST:
        return 0
    parts, _ = ndimage.label(foreground)
    areas = np.bincount(parts.ravel())[1:]
    return int((areas >= np.pi * (diameter / 6) ** 2).sum())
