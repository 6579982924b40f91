"""Image QC: shape, channels, per-channel intensity range and saturation."""

from __future__ import annotations

import numpy as np


def saturation_value(dtype) -> float:
    """The value a saturated pixel holds: the integer maximum, or 1.0 for float images."""
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def blank_image_message(path, what: str = "every pixel") -> str:
    return (
        f"{path}: {what} is 0, so there is nothing to segment (an empty or failed export?); "
        "export the image again, or take its row out of the sample sheet"
    )


def image_qc(path: str, max_saturated_fraction: float = 0.01) -> dict:
    from gpubio.image_io import ImageError, read_image

    image, axes = read_image(path)
    if not image.any():
        raise ImageError(blank_image_message(path))
    top = saturation_value(image.dtype)
    saturated = [float((c >= top).mean()) for c in image]
    return {
        "file_axes": axes,
        "shape": [int(image.shape[1]), int(image.shape[2])],
        "channels": int(image.shape[0]),
        "dtype": str(image.dtype),
        "min": [c.min().item() for c in image],
        "max": [c.max().item() for c in image],
        "mean": [float(c.mean()) for c in image],
        "saturated_fraction": saturated,
        "saturation_flag": any(s > max_saturated_fraction for s in saturated),
    }


def write_image_qc(path: str, out: str, max_saturated_fraction: float) -> dict:
    import json

    from gpubio.atomic import write_text_atomic

    result = image_qc(path, max_saturated_fraction)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    return result
