"""Read TIFF / OME-TIFF images as (channels, y, x) arrays."""

from __future__ import annotations

import numpy as np


def read_image(path: str) -> tuple[np.ndarray, str]:
    """Return (array shaped C x Y x X, the file's own axes string).

    Z and T stacks are reduced by maximum projection so downstream 2D steps see one plane
    per channel; RGB samples ('S') count as channels.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes = series.axes.upper()
        data = series.asarray()
    axes = axes.replace("S", "C")
    for axis in "TZ":
        if axis in axes:
            i = axes.index(axis)
            data, axes = data.max(axis=i), axes[:i] + axes[i + 1 :]
    if "Q" in axes and "C" not in axes:  # an axis tifffile could not name: take it as channels
        axes = axes.replace("Q", "C", 1)
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{path}: cannot find Y and X axes in {series.axes!r}")
    if "C" not in axes:
        data, axes = data[np.newaxis], "C" + axes
    order = [axes.index(a) for a in "CYX"]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 2D image with optional channels, found axes {series.axes!r}")
    return np.transpose(data, order), series.axes
