"""Per-cell features from a label image and its image, and the QC overlay figure.

Features are the regionprops measures (area, centroid, eccentricity, mean intensity per
channel), accumulated block by block from pixel sums, so a label image of any size is
measured in bounded memory and a cell crossing block borders is measured whole.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 2048


class _Sums:
    """Running per-label pixel sums; grows as larger labels appear."""

    def __init__(self, channels: int):
        self.channels = channels
        self.size = 0
        self.moments = np.zeros((6, 0))  # n, r, c, rr, cc, rc
        self.intensity = np.zeros((channels, 0))

    def add(self, labels: np.ndarray, pixels: np.ndarray, r0: int, c0: int) -> None:
        flat = labels.ravel().astype(np.int64)
        n = int(flat.max()) + 1 if flat.size else 1
        if n > self.size:
            self.moments = np.pad(self.moments, ((0, 0), (0, n - self.size)))
            self.intensity = np.pad(self.intensity, ((0, 0), (0, n - self.size)))
            self.size = n
        rows, cols = np.indices(labels.shape, dtype=np.float64)
        rows, cols = rows.ravel() + r0, cols.ravel() + c0
        for i, w in enumerate((None, rows, cols, rows * rows, cols * cols, rows * cols)):
            self.moments[i, :n] += np.bincount(flat, weights=w, minlength=n)
        for c in range(self.channels):
            self.intensity[c, :n] += np.bincount(flat, weights=pixels[c].ravel().astype(np.float64), minlength=n)


def eccentricity(var_r: np.ndarray, var_c: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Eccentricity of the ellipse with the same second moments (as skimage regionprops)."""
    half_trace = (var_r + var_c) / 2
    root = np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
    major, minor = half_trace + root, np.maximum(half_trace - root, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.sqrt(np.where(major > 0, 1 - minor / major, 0.0))
    return ecc


FEATURE_COLUMNS = ["sample", "cell", "area", "centroid_row", "centroid_col", "eccentricity"]


def cell_features(image, masks, sample: str, block: int = BLOCK):
    """A table, one row per cell: `image` (C, Y, X) and `masks` (1, Y, X) are TiffImage-like."""
    import pandas as pd

    channels, height, width = image.shape
    if masks.shape[1:] != (height, width):
        raise ValueError(f"masks {masks.shape[1:]} and image {(height, width)} differ in size")
    sums = _Sums(channels)
    for r0 in range(0, height, block):
        for c0 in range(0, width, block):
            r1, c1 = min(height, r0 + block), min(width, c0 + block)
            sums.add(masks.region(r0, r1, c0, c1)[0], image.region(r0, r1, c0, c1), r0, c0)
    n, sr, sc, srr, scc, src = sums.moments
    cells = np.nonzero(n)[0]
    cells = cells[cells > 0]
    area = n[cells]
    mean_r, mean_c = sr[cells] / area, sc[cells] / area
    var_r = srr[cells] / area - mean_r**2
    var_c = scc[cells] / area - mean_c**2
    cov = src[cells] / area - mean_r * mean_c
    table = pd.DataFrame(
        {
            "sample": sample,
            "cell": cells.astype(np.int64),
            "area": area.astype(np.int64),
            "centroid_row": mean_r,
            "centroid_col": mean_c,
            "eccentricity": eccentricity(var_r, var_c, cov),
        },
        columns=FEATURE_COLUMNS,
    )
    for c in range(channels):
        table[f"mean_ch{c + 1}"] = sums.intensity[c, cells] / area
    return table


def write_overlay_png(path, image, masks, channel: int, title: str, max_side: int = 1024) -> None:
    """The image (one channel, grey) with cell outlines in colour; large images downsampled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from gpubio.atomic import atomic_path

    _, height, width = image.shape
    step = max(1, math.ceil(max(height, width) / max_side))
    plane = image.strided(step)[channel].astype(np.float32)
    labels = masks.strided(step)[0]
    low, high = np.percentile(plane, (1, 99.5))
    grey = np.clip((plane - low) / max(float(high - low), 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 0.85, 0.0)
    side = 8.0
    fig, ax = plt.subplots(figsize=(side, side * plane.shape[0] / plane.shape[1] + 0.5))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title + (f" (every {step}th pixel)" if step > 1 else ""))
    ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
