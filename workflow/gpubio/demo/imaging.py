"""Synthetic fluorescence images of nuclei with exact ground-truth masks.

A scene is a set of elliptical nuclei defined in continuous coordinates, so it can be
rendered on any pixel grid: the sample image on the identity grid, its reference image
on a grid moved by a known rigid transform. Planted truth: label masks (also on the
reference grid, for the registered image), the transform, and the QC numbers (shape,
channels, intensity range, saturated fraction).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

MAX_UINT16 = np.iinfo(np.uint16).max


def random_nuclei(rng: np.random.Generator, shape, n: int, radius=(6.0, 10.0), margin=4.0):
    """Non-overlapping ellipses: (cy, cx, ry, rx, angle, brightness)."""
    nuclei = []
    for _ in range(n * 50):
        if len(nuclei) == n:
            break
        ry, rx = rng.uniform(*radius, size=2)
        cy, cx = rng.uniform(margin + ry, shape[0] - margin - ry), rng.uniform(margin + rx, shape[1] - margin - rx)
        if all(np.hypot(cy - o[0], cx - o[1]) > max(ry, rx) + max(o[2], o[3]) + 3 for o in nuclei):
            nuclei.append((cy, cx, ry, rx, rng.uniform(0, np.pi), rng.uniform(0.6, 1.0)))
    return nuclei


def render(nuclei, shape, transform=None):
    """Label image and per-pixel brightness of the scene sampled at the grid points.

    transform (3x3, homogeneous, row/col) maps grid coordinates into scene coordinates.
    """
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    if transform is not None:
        pts = transform @ np.stack([rr.ravel(), cc.ravel(), np.ones(rr.size)])
        rr, cc = pts[0].reshape(shape), pts[1].reshape(shape)
    labels = np.zeros(shape, dtype=np.uint16)
    brightness = np.zeros(shape)
    for k, (cy, cx, ry, rx, angle, b) in enumerate(nuclei, start=1):
        dy, dx = rr - cy, cc - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1.0
        labels[inside] = k
        brightness[inside] = b
    return labels, brightness


def to_image(rng, labels, brightness, gain=20000.0, background=400.0):
    """Two channels (nuclei, cytoplasm ring) as uint16 with blur and shot noise."""
    nuclear = ndimage.gaussian_filter(brightness, 1.0) * gain
    ring = ndimage.grey_dilation(labels, size=7) > 0
    cyto = ndimage.gaussian_filter((ring & (labels == 0)).astype(float), 1.5) * gain * 0.3
    channels = []
    for signal in (nuclear, cyto):
        noisy = rng.poisson(signal + background).astype(float) + rng.normal(0, 30, signal.shape)
        channels.append(np.clip(noisy, 0, MAX_UINT16).astype(np.uint16))
    return np.stack(channels)


def rigid_matrix(rotation_deg: float, translation, centre) -> np.ndarray:
    """Homogeneous (row, col) matrix: rotate by rotation_deg about centre, then translate."""
    t = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = np.asarray(centre) - rot @ np.asarray(centre) + np.asarray(translation)
    return m


def image_qc_truth(image: np.ndarray) -> dict:
    return {
        "shape": list(image.shape[1:]),
        "channels": int(image.shape[0]),
        "dtype": str(image.dtype),
        "min": [int(c.min()) for c in image],
        "max": [int(c.max()) for c in image],
        "saturated_fraction": [float((c == MAX_UINT16).mean()) for c in image],
    }


def make_imaging(outdir: Path, rng: np.random.Generator, size: int = 256) -> dict:
    """Write 2 sample images (one with a reference), masks, a training set and truth."""
    import tifffile

    outdir.mkdir(parents=True, exist_ok=True)
    shape = (size, size)
    truth = {}

    # sample 1: TIFF plus a reference that differs by a known rigid transform
    nuclei = random_nuclei(rng, shape, 40)
    labels, bright = render(nuclei, shape)
    image = to_image(rng, labels, bright)
    rotation, translation = 6.0, (5.0, -7.0)
    transform = rigid_matrix(rotation, translation, centre=((size - 1) / 2, (size - 1) / 2))
    ref_labels, ref_bright = render(nuclei, shape, transform)
    reference = to_image(rng, ref_labels, ref_bright)
    tifffile.imwrite(outdir / "nuclei1.tif", image, metadata={"axes": "CYX"})
    tifffile.imwrite(outdir / "nuclei1_reference.tif", reference, metadata={"axes": "CYX"})
    tifffile.imwrite(outdir / "nuclei1_masks.tif", labels)
    # the same nuclei on the reference grid: the truth for masks of the registered image
    tifffile.imwrite(outdir / "nuclei1_reference_masks.tif", ref_labels)
    truth["nuclei1"] = image_qc_truth(image) | {
        "cells": len(nuclei),
        "reference_transform": {
            "rotation_deg": rotation,
            "translation_rc": list(translation),
            "centre_rc": [(size - 1) / 2] * 2,
            "meaning": "reference pixel (r, c) shows the scene at image coordinates M @ (r, c, 1)",
        },
    }

    # sample 2: OME-TIFF, brighter, so some nuclei clip at the uint16 maximum
    nuclei = random_nuclei(rng, shape, 35)
    labels, bright = render(nuclei, shape)
    image = to_image(rng, labels, bright, gain=90000.0)
    tifffile.imwrite(outdir / "nuclei2.ome.tif", image, ome=True, metadata={"axes": "CYX"})
    tifffile.imwrite(outdir / "nuclei2_masks.tif", labels)
    truth["nuclei2"] = image_qc_truth(image) | {"cells": len(nuclei)}

    # training set in Cellpose's naming: <name>.tif + <name>_masks.tif
    train = outdir / "train"
    train.mkdir(exist_ok=True)
    for k in range(8):
        nuclei = random_nuclei(rng, (128, 128), 12)
        labels, bright = render(nuclei, (128, 128))
        tifffile.imwrite(train / f"train{k}.tif", to_image(rng, labels, bright), metadata={"axes": "CYX"})
        tifffile.imwrite(train / f"train{k}_masks.tif", labels)

    (outdir / "truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    return {
        "nuclei1": {"image": "nuclei1.tif", "reference_image": "nuclei1_reference.tif"},
        "nuclei2": {"image": "nuclei2.ome.tif"},
    }
