"""Histopathology test data made without gpubio: a pyramidal slide with planted tissue.

Two rectangles of tissue on white glass, each with its own texture: "nuclei" (dark purple
disks on pink) and "fibres" (diagonal pink stripes). Level 0 is 4096 x 3072 px at
0.25 µm/px (a 40x scan), written as a tiled, compressed TIFF with two reduced levels
(4x, 16x) in SubIFDs, the layout of pyramidal OME-TIFF and of converted SVS files.
Rectangle edges sit on multiples of 16 px, so the planted mask is exact at every level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT, MPP = 4096, 3072, 0.25
DOWNSAMPLES = (1, 4, 16)
GLASS = (244, 244, 246)


@dataclass(frozen=True)
class Region:
    name: str
    x0: int
    y0: int
    x1: int
    y1: int


# nuclei: on the 448 px grid (20x tiles of 224 px); fibres: a quarter tile off it
REGIONS = (Region("nuclei", 448, 448, 2240, 1792), Region("fibres", 2800, 560, 3920, 2576))


def planted_mask(downsample: int = 1) -> np.ndarray:
    mask = np.zeros((HEIGHT // downsample, WIDTH // downsample), bool)
    for r in REGIONS:
        mask[r.y0 // downsample : r.y1 // downsample, r.x0 // downsample : r.x1 // downsample] = True
    return mask


def _nuclei(height: int, width: int, rng) -> np.ndarray:
    rgb = np.empty((height, width, 3), np.float32)
    rgb[:] = (214, 150, 214)
    yy, xx = np.mgrid[0:height, 0:width]
    dark = np.zeros((height, width), bool)
    for cy, cx in zip(rng.integers(0, height, height * width // 900), rng.integers(0, width, height * width // 900)):
        y0, y1, x0, x1 = max(cy - 9, 0), min(cy + 10, height), max(cx - 9, 0), min(cx + 10, width)
        dark[y0:y1, x0:x1] |= (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= 64
    rgb[dark] = (70, 40, 130)
    return rgb


def _fibres(height: int, width: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    phase = np.sin((xx + yy) * 2 * np.pi / 24)[..., None]
    light, dark = np.array((246, 190, 180), np.float32), np.array((228, 128, 128), np.float32)
    return light + (dark - light) * (phase > 0)


def level0(seed: int = 0) -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 RGB of the slide at full resolution."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((HEIGHT, WIDTH, 3), np.float32)
    rgb[:] = GLASS
    texture = {"nuclei": _nuclei, "fibres": _fibres}
    for r in REGIONS:
        rgb[r.y0 : r.y1, r.x0 : r.x1] = texture[r.name](r.y1 - r.y0, r.x1 - r.x0, rng)
    rgb += rng.normal(0, 2.0, (HEIGHT, WIDTH, 1)).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def reduce(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    blocks = rgb[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).astype(np.float32)
    return np.round(blocks.mean(axis=(1, 3))).astype(np.uint8)


def write_slide(path, seed: int = 0, resolution: bool = True) -> None:
    """The pyramidal TIFF; without `resolution` the file states no pixel size (the sheet must)."""
    import tifffile

    full = level0(seed)
    extra = {"resolution": (1e4 / MPP, 1e4 / MPP), "resolutionunit": "CENTIMETER"} if resolution else {}
    with tifffile.TiffWriter(path) as tif:
        tif.write(full, tile=(256, 256), photometric="rgb", compression="zlib", subifds=len(DOWNSAMPLES) - 1, **extra)
        for factor in DOWNSAMPLES[1:]:
            tif.write(reduce(full, factor), tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)


def expected_tiles(tile_px_level0: int, min_fraction: float) -> list[tuple[int, int, float]]:
    """(x, y, tissue fraction) of every whole grid tile covered at least `min_fraction`, from the rectangles."""
    tiles = []
    for y in range(0, HEIGHT - tile_px_level0 + 1, tile_px_level0):
        for x in range(0, WIDTH - tile_px_level0 + 1, tile_px_level0):
            covered = sum(
                max(0, min(x + tile_px_level0, r.x1) - max(x, r.x0))
                * max(0, min(y + tile_px_level0, r.y1) - max(y, r.y0))
                for r in REGIONS
            )
            fraction = covered / tile_px_level0**2
            if fraction >= min_fraction:
                tiles.append((x, y, fraction))
    return tiles


def region_of(x: int, y: int, size: int) -> str:
    """The planted region covering most of a tile."""
    cover = {
        r.name: max(0, min(x + size, r.x1) - max(x, r.x0)) * max(0, min(y + size, r.y1) - max(y, r.y0)) for r in REGIONS
    }
    return max(cover, key=cover.get)
