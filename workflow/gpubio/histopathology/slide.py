"""Whole-slide images (SVS, pyramidal TIFF, OME-TIFF) read region by region with tifffile.

A slide is never loaded whole: ``Slide.region`` reads one window of one pyramid level
through the file's own tiles (tifffile's zarr view), and ``Slide.thumbnail`` reads the
lowest-resolution level, or reduces a large level strip by strip.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from gpubio.errors import UnusableInput

# micrometres per unit of the TIFF ResolutionUnit tag (2 = inch, 3 = centimetre)
_UM_PER_RESOLUTION_UNIT = {2: 25400.0, 3: 10000.0}
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
THUMBNAIL_MAX_SIDE = 4096


class SlideError(UnusableInput):
    """A slide that cannot be read as asked; the message names the problem and the fix."""


@dataclass(frozen=True)
class Level:
    index: int
    width: int
    height: int
    downsample: float  # level-0 pixels per pixel of this level


def file_mpp(tif) -> float | None:
    """Microns per pixel at level 0 as the file states it (Aperio, OME or TIFF resolution tags)."""
    page = tif.pages[0]
    description = page.description or ""
    if tif.is_svs:
        match = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", description)
        if match:
            return float(match.group(1))
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = next((e for e in root.iter() if e.tag.endswith("Pixels")), None) if root is not None else None
        if pixels is not None and pixels.get("PhysicalSizeX"):
            unit = pixels.get("PhysicalSizeXUnit", "µm")
            if unit in _OME_UNITS_UM:
                return float(pixels.get("PhysicalSizeX")) * _OME_UNITS_UM[unit]
    tags = page.tags
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    if "XResolution" in tags and int(unit) in _UM_PER_RESOLUTION_UNIT:
        numerator, denominator = tags["XResolution"].value
        # scanners that know no resolution often write 1 or 72 pixels per inch
        if numerator and denominator and not (int(unit) == 2 and numerator / denominator in (1, 72, 96, 300)):
            return _UM_PER_RESOLUTION_UNIT[int(unit)] * denominator / numerator
    return None


class Slide:
    """One whole-slide image: its pyramid levels, its resolution, and windowed reads."""

    def __init__(self, path, mpp: float | None = None):
        import tifffile

        self.path = str(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (OSError, tifffile.TiffFileError) as exc:
            raise SlideError(
                f"{self.path}: cannot be read as a TIFF / SVS slide ({exc}); give a whole-slide TIFF, OME-TIFF or SVS"
            ) from None
        series = self._tif.series[0]
        axes = series.axes.upper()
        if axes not in ("YXS", "YX") or (axes == "YXS" and series.shape[-1] not in (3, 4)):
            self.close()
            raise SlideError(
                f"{self.path}: the first image is {axes} {series.shape}, not an RGB slide (Y, X, 3 samples); "
                "give a brightfield (H&E) whole-slide image"
            )
        self._series = series
        height0, width0 = series.levels[0].shape[:2]
        self.levels = [
            Level(i, lvl.shape[1], lvl.shape[0], (width0 / lvl.shape[1] + height0 / lvl.shape[0]) / 2)
            for i, lvl in enumerate(series.levels)
        ]
        self.file_mpp = file_mpp(self._tif)
        self.mpp = mpp if mpp else self.file_mpp
        self._arrays: dict[int, object] = {}

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) at level 0."""
        return self.levels[0].width, self.levels[0].height

    def _array(self, level: int):
        import zarr

        if level not in self._arrays:
            self._arrays[level] = zarr.open(self._series.aszarr(level=level), mode="r")
        return self._arrays[level]

    def region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 pixels (height, width, 3) of a window in `level`'s own coordinates.

        Only the file tiles under the window are decoded; the part outside the level is white.
        """
        info = self.levels[level]
        out = np.full((height, width, 3), 255, np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, info.width), min(y + height, info.height)
        if x1 <= x0 or y1 <= y0:
            return out
        pixels = np.asarray(self._array(level)[y0:y1, x0:x1])
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=2)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = _to_uint8(pixels[..., :3])
        return out

    def thumbnail(self, max_side: int = THUMBNAIL_MAX_SIDE) -> tuple[np.ndarray, float]:
        """The lowest-resolution level (block-averaged, block by block, when still larger than
        `max_side`) and its downsample from level 0."""
        level = self.levels[-1]
        factor = max(1, int(np.ceil(max(level.width, level.height) / max_side)))
        if factor == 1:
            return self.region(level.index, 0, 0, level.width, level.height), level.downsample
        width, height = level.width // factor, level.height // factor
        thumb = np.empty((height, width, 3), np.uint8)
        step = factor * max(1, 1024 // factor)  # level pixels per block side: a few MB per read
        for top in range(0, height * factor, step):
            rows = min(step, height * factor - top)
            for left in range(0, width * factor, step):
                cols = min(step, width * factor - left)
                block = self.region(level.index, left, top, cols, rows).astype(np.float32)
                block = block.reshape(rows // factor, factor, cols // factor, factor, 3).mean(axis=(1, 3))
                thumb[top // factor : (top + rows) // factor, left // factor : (left + cols) // factor] = np.round(
                    block
                )
        return thumb, level.downsample * factor

    def close(self) -> None:
        self._tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return (pixels >> 8).astype(np.uint8)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def slide_problem(path, mpp: float | None, needs_mpp: bool = True) -> str | None:
    """What keeps a slide from being tiled, from its headers alone; None when it is fine."""
    from gpubio.image_io import tiff_problem

    problem = tiff_problem(path)
    if problem:
        return problem.replace("give a TIFF or OME-TIFF image", "give an SVS, pyramidal TIFF or OME-TIFF slide")
    try:
        with Slide(path, mpp) as slide:
            if needs_mpp and not slide.mpp:
                return (
                    "the file does not state its resolution (microns per pixel); "
                    "add it in the sheet's 'mpp' column (e.g. 0.25 for a 40x scan)"
                )
    except SlideError as error:
        return str(error).split(": ", 1)[1]
    return None
