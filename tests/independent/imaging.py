"""Imaging test data made without gpubio: real tissue texture with planted transforms.

The scene is scikit-image's bundled immunohistochemistry photograph (offline, part of
the package) or smoothed multi-scale noise. Pairs are made by sampling: the *image* is a
plain crop of the scene, and the *reference* shows the scene at T(p) for each of its
pixels p, where T is the planted transform in image pixel coordinates. So registering
the image to the reference must find exactly T: reference pixel p shows the image at T(p).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def tissue_scene(seed: int = 0) -> np.ndarray:
    """(2, 512, 512) float: haematoxylin-like and eosin-like planes of the IHC photograph.

    `seed` flips and rotates the photograph by multiples of 90 degrees, so different seeds
    give different (still real) scenes.
    """
    from skimage import data

    rgb = data.immunohistochemistry().astype(np.float64) / 255.0
    # optical density: dark stain = high signal, as in a fluorescence-like channel
    density = -np.log(np.clip(rgb, 1.0 / 255, 1.0))
    planes = np.stack([density[..., 2], density[..., 0]])  # blue-absorbing, red-absorbing
    rng = np.random.default_rng(seed)
    planes = np.rot90(planes, k=int(rng.integers(4)), axes=(1, 2))
    if rng.integers(2):
        planes = planes[:, :, ::-1]
    return np.ascontiguousarray(planes)


def noise_scene(shape=(2, 480, 480), seed: int = 0) -> np.ndarray:
    """(C, Y, X) tissue-like texture: Gaussian-smoothed noise summed over four scales."""
    rng = np.random.default_rng(seed)
    out = np.zeros(shape)
    for sigma, weight in ((1.5, 0.5), (4.0, 1.0), (10.0, 1.0), (25.0, 0.7)):
        layer = ndimage.gaussian_filter(rng.normal(size=shape), sigma=(0, sigma, sigma))
        out += weight * layer / layer.std()
    return out - out.min()


@dataclass
class PlantedTransform:
    """T(p) = R (p - centre) + centre + shift + warp(p), in the image's (row, col) pixels."""

    rotation_deg: float
    shift_rc: tuple[float, float]
    centre_rc: tuple[float, float]
    warp_px: float = 0.0  # amplitude of the sinusoidal displacement
    warp_period_px: float = 150.0

    def matrix(self) -> np.ndarray:
        """The linear part as a 3 x 3 homogeneous (row, col) matrix."""
        a = math.radians(self.rotation_deg)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        centre = np.asarray(self.centre_rc)
        m = np.eye(3)
        m[:2, :2] = rot
        m[:2, 2] = centre + np.asarray(self.shift_rc) - rot @ centre
        return m

    def warp(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The smooth displacement (rows, cols) at the given reference pixels."""
        k = 2 * math.pi / self.warp_period_px
        return (
            self.warp_px * np.sin(k * cols + 0.7) * np.cos(0.5 * k * rows),
            self.warp_px * np.sin(k * rows + 1.9) * np.cos(0.5 * k * cols + 0.3),
        )

    def apply(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """T(p): where reference pixels (rows, cols) lie in the image."""
        m = self.matrix()
        r = m[0, 0] * rows + m[0, 1] * cols + m[0, 2]
        c = m[1, 0] * rows + m[1, 1] * cols + m[1, 2]
        dr, dc = self.warp(rows, cols)
        return r + dr, c + dc


@dataclass
class RegistrationPair:
    image: np.ndarray  # (C, S, S) uint16: a crop of the scene
    reference: np.ndarray  # (C, S, S) uint16: the scene seen through the planted transform
    truth: PlantedTransform
    expected: np.ndarray  # (C, S, S) float: the image resampled at T(p), NaN outside it


def _to_uint16(planes: np.ndarray, scale: float) -> np.ndarray:
    return np.clip(np.rint(planes * scale), 0, 65535).astype(np.uint16)


def make_pair(
    scene: np.ndarray,
    size: int = 256,
    rotation_deg: float = 7.0,
    shift_rc=(9.5, -12.25),
    warp_px: float = 4.0,
    warp_period_px: float = 150.0,
    noise: float = 0.01,
    seed: int = 0,
) -> RegistrationPair:
    """A `size` x `size` image cropped from the scene's middle and its transformed reference."""
    rng = np.random.default_rng(seed)
    _, height, width = scene.shape
    top, left = (height - size) // 2, (width - size) // 2
    centre = ((size - 1) / 2, (size - 1) / 2)
    truth = PlantedTransform(rotation_deg, tuple(shift_rc), centre, warp_px, warp_period_px)
    rows, cols = np.indices((size, size), dtype=np.float64)
    tr, tc = truth.apply(rows, cols)
    # the reference samples the scene (beyond the crop too), so it is fully covered
    reference = np.stack([ndimage.map_coordinates(p, [tr + top, tc + left], order=3, mode="reflect") for p in scene])
    image = scene[:, top : top + size, left : left + size]
    scale = 20000.0 / float(np.percentile(scene, 99.5))
    reference = reference + rng.normal(0, noise * float(np.percentile(scene, 99.5)), reference.shape)
    image_noisy = image + rng.normal(0, noise * float(np.percentile(scene, 99.5)), image.shape)
    inside = (tr >= 0) & (tr <= size - 1) & (tc >= 0) & (tc <= size - 1)
    expected = np.stack([ndimage.map_coordinates(p, [tr, tc], order=1) for p in image])
    expected[:, ~inside] = np.nan
    return RegistrationPair(
        image=_to_uint16(image_noisy, scale),
        reference=_to_uint16(reference, scale),
        truth=truth,
        expected=expected * scale,
    )


def padded_copy(image: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    """`image` (C, Y, X) inside a zero border `border` px wide, and the footprint of the content."""
    channels, height, width = image.shape
    out = np.zeros((channels, height + 2 * border, width + 2 * border), dtype=image.dtype)
    out[:, border : border + height, border : border + width] = image
    footprint = np.zeros(out.shape[1:], dtype=bool)
    footprint[border : border + height, border : border + width] = True
    return out, footprint
