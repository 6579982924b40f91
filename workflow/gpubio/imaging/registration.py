"""Register an image to its reference: itk-elastix, or a learned (torch) registration.

Both methods map reference (fixed) pixel coordinates to image (moving) coordinates and
resample every channel of the image onto the reference grid. Each returns the registered
image, the pixels it covers (`valid`), and the linear part of the transform as a 3 x 3
homogeneous matrix in (row, col) pixel coordinates: reference pixel (r, c) shows the image
at ``matrix @ (r, c, 1)`` (plus any local B-spline / displacement on top).

- ``register_elastix``: rigid / affine / B-spline parameter maps run in sequence (or your
  own elastix parameter files).
- ``register_learned``: VoxelMorph-style instance optimisation in torch: a rigid or affine
  transform, then a smooth displacement field, fitted to this image pair by gradient
  descent on normalised cross-correlation (global, then local), coarse to fine. Runs on
  the GPU when torch sees one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("gpubio")

ELASTIX_TRANSFORMS = ("translation", "rigid", "affine", "bspline")


@dataclass
class Registration:
    registered: np.ndarray  # (C, Y, X) float32 on the reference grid, 0 outside `valid`
    valid: np.ndarray  # (Y, X) bool: reference pixels the image covers
    matrix: np.ndarray  # 3 x 3, (row, col): reference pixel -> image pixel (linear part)
    method: str
    details: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- measures


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation (Pearson r) of two images, over `mask` if given."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def rigid_parameters(matrix: np.ndarray, centre_rc) -> dict:
    """Rotation (degrees) and translation (rows, cols) about `centre_rc` of a (row, col) matrix.

    For m = rigid_matrix(angle, t, centre) this returns angle and t back (the demo's truth).
    """
    m = np.asarray(matrix, dtype=float)
    centre = np.asarray(centre_rc, dtype=float)
    linear = m[:2, :2]
    u, _, vt = np.linalg.svd(linear)
    rotation = u @ vt  # nearest rotation
    angle = math.degrees(math.atan2(rotation[1, 0], rotation[0, 0]))
    translation = m[:2, :2] @ centre + m[:2, 2] - centre
    return {"rotation_deg": angle, "translation_rc": translation.tolist(), "centre_rc": centre.tolist()}


def _xy_to_rc(m_xy: np.ndarray) -> np.ndarray:
    """A homogeneous (x, y) matrix as the same map in (row, col) = (y, x)."""
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return swap @ m_xy @ swap


def _to_unit(image: np.ndarray, percentiles=(1.0, 99.0)) -> np.ndarray:
    low, high = np.percentile(image, percentiles)
    return np.clip((image.astype(np.float32) - low) / max(float(high - low), 1e-6), -1.0, 2.0)


# --------------------------------------------------------------------------- elastix


def elastix_parameter_object(transforms, grid_spacing: float, iterations: int | None, parameter_files=()):
    """An elastix ParameterObject: your parameter files, else the default maps named in `transforms`."""
    import itk

    parameters = itk.ParameterObject.New()
    if parameter_files:
        for path in parameter_files:
            parameters.AddParameterFile(str(path))
        return parameters
    for name in transforms:
        if name not in ELASTIX_TRANSFORMS:
            raise ValueError(f"unknown elastix transform {name!r}; use {', '.join(ELASTIX_TRANSFORMS)}")
        pmap = parameters.GetDefaultParameterMap(name)
        if name == "bspline":
            pmap["FinalGridSpacingInPhysicalUnits"] = [str(float(grid_spacing))]
        if iterations:
            pmap["MaximumNumberOfIterations"] = [str(int(iterations))]
        parameters.AddParameterMap(pmap)
    return parameters


def _elastix_map_matrix(pmap: dict) -> np.ndarray | None:
    """The (x, y) homogeneous matrix of one linear elastix transform map; None for B-splines."""
    kind = pmap["Transform"][0]
    p = [float(v) for v in pmap["TransformParameters"]]
    centre = np.array([float(v) for v in pmap.get("CenterOfRotationPoint", ["0", "0"])])
    if kind == "TranslationTransform":
        linear, t = np.eye(2), np.array(p[:2])
    elif kind == "EulerTransform":
        a = p[0]
        linear, t = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]), np.array(p[1:3])
    elif kind == "SimilarityTransform":
        s, a = p[0], p[1]
        linear, t = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]), np.array(p[2:4])
    elif kind == "AffineTransform":
        linear, t = np.array(p[:4]).reshape(2, 2), np.array(p[4:6])
    else:
        return None
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = centre - linear @ centre + t
    return m


def elastix_linear_matrix(maps: list[dict]) -> np.ndarray:
    """The composed linear part of elastix result maps, in (row, col) pixel coordinates.

    elastix composes a map with the maps before it as T(x) = T_map(T_before(x)): the first
    map is applied first (checked against transformix's deformation field in the tests).
    Assumes unit spacing and zero origin (plain TIFF pixels).
    """
    m_xy = np.eye(3)
    for pmap in maps:
        step = _elastix_map_matrix(pmap)
        if step is not None:
            m_xy = step @ m_xy
    return _xy_to_rc(m_xy)


def register_elastix(
    reference: np.ndarray,
    image: np.ndarray,
    channel: int = 0,
    transforms=("rigid", "bspline"),
    grid_spacing: float = 32.0,
    iterations: int | None = None,
    parameter_files=(),
    threads: int = 1,
) -> Registration:
    """Register (C, Y, X) `image` to (C', Y', X') `reference` on one channel; warp all channels."""
    import itk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(max(1, int(threads)))
    fixed = itk.image_view_from_array(np.ascontiguousarray(_to_unit(reference[channel])))
    moving = itk.image_view_from_array(np.ascontiguousarray(_to_unit(image[channel])))
    parameters = elastix_parameter_object(transforms, grid_spacing, iterations, parameter_files)
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False)
    maps = [
        {k: list(v) for k, v in result.GetParameterMap(i).items()} for i in range(result.GetNumberOfParameterMaps())
    ]
    for i in range(result.GetNumberOfParameterMaps()):
        result.SetParameter(i, "DefaultPixelValue", "0")

    def warp(plane: np.ndarray) -> np.ndarray:
        moved = itk.transformix_filter(
            itk.image_view_from_array(np.ascontiguousarray(plane, dtype=np.float32)), result, log_to_console=False
        )
        return np.asarray(itk.array_from_image(moved), dtype=np.float32)

    valid = warp(np.ones(image.shape[1:], np.float32)) > 0.999
    registered = np.stack([warp(c.astype(np.float32)) for c in image])
    registered[:, ~valid] = 0
    return Registration(
        registered=registered,
        valid=valid,
        matrix=elastix_linear_matrix(maps),
        method="elastix",
        details={"transforms": [m["Transform"][0] for m in maps], "parameter_maps": maps},
    )


# --------------------------------------------------------------------------- learned (torch)


def _pixel_to_normalised(height: int, width: int):
    """Homogeneous (x, y) pixel -> grid_sample's [-1, 1] coordinates (align_corners=True)."""
    import torch

    return torch.tensor(
        [[2.0 / max(width - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(height - 1, 1), -1.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )


def _smooth_downsample(x, factor: int):
    """Blur (Gaussian, sigma ~ factor / 2) and average-pool a (1, C, H, W) tensor by `factor`."""
    import torch
    import torch.nn.functional as F

    if factor == 1:
        return x
    sigma = factor / 2.0
    radius = int(math.ceil(2 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device) / sigma) ** 2)
    k = k / k.sum()
    channels = x.shape[1]
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="replicate"),
        k.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="replicate"),
        k.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    return F.avg_pool2d(x, factor, ceil_mode=True)


def _weighted_ncc(a, b, w):
    """Global NCC of a and b with pixel weights w (all (1, 1, H, W) tensors)."""
    total = w.sum().clamp_min(1e-6)
    ma, mb = (a * w).sum() / total, (b * w).sum() / total
    da, db = a - ma, b - mb
    cov = (w * da * db).sum()
    return cov / ((w * da * da).sum() * (w * db * db).sum()).clamp_min(1e-12).sqrt()


def _local_ncc(a, b, w, window: int = 9):
    """Mean windowed NCC (VoxelMorph's loss) over covered pixels."""
    import torch.nn.functional as F

    pad = window // 2

    def box(x):
        return F.avg_pool2d(x, window, stride=1, padding=pad, count_include_pad=False)

    ma, mb = box(a), box(b)
    cov = box(a * b) - ma * mb
    va, vb = box(a * a) - ma * ma, box(b * b) - mb * mb
    cc = cov / (va * vb).clamp_min(0).add(1e-6).sqrt()
    return (cc * w).sum() / w.sum().clamp_min(1e-6)


def register_learned(
    reference: np.ndarray,
    image: np.ndarray,
    channel: int = 0,
    transform: str | None = None,
    deformable: bool | None = None,
    levels=(4, 2, 1),
    iterations: int | None = None,
    learning_rate: float | None = None,
    smoothness: float | None = None,
    grid_step: int = 16,
    device=None,
    seed: int = 0,
) -> Registration:
    """Fit a rigid/affine transform, then a smooth displacement, to this image pair (torch).

    The transform is optimised coarse to fine (`levels` = downsampling factors) on global
    NCC; the displacement field (one vector per `grid_step` px, upsampled smoothly) on
    local NCC plus `smoothness` x its squared gradient, at the two finest levels.
    Settings left at None take imaging.registration.learned's defaults from the schema.
    """
    import torch
    import torch.nn.functional as F

    from gpubio.imaging.settings import imaging_defaults

    defaults = imaging_defaults()["registration"]["learned"]
    transform = defaults["transform"] if transform is None else transform
    deformable = defaults["deformable"] if deformable is None else deformable
    iterations = defaults["iterations"] if iterations is None else iterations
    learning_rate = defaults["learning_rate"] if learning_rate is None else learning_rate
    smoothness = defaults["smoothness"] if smoothness is None else smoothness
    if transform not in ("rigid", "affine"):
        raise ValueError(f"learned registration transform must be rigid or affine, got {transform!r}")
    torch.manual_seed(seed)
    device = torch.device(device or "cpu")
    dtype = torch.float32
    fixed = torch.as_tensor(_to_unit(reference[channel]), dtype=dtype, device=device)[None, None]
    moving = torch.as_tensor(_to_unit(image[channel]), dtype=dtype, device=device)[None, None]
    hf, wf = fixed.shape[-2:]
    hm, wm = moving.shape[-2:]
    n_fixed_inv = torch.linalg.inv(_pixel_to_normalised(hf, wf)).to(device)
    n_moving = _pixel_to_normalised(hm, wm).to(device)
    centre_f = torch.tensor([(wf - 1) / 2, (hf - 1) / 2], dtype=torch.float64, device=device)
    centre_m = torch.tensor([(wm - 1) / 2, (hm - 1) / 2], dtype=torch.float64, device=device)

    angle = torch.zeros((), dtype=torch.float64, device=device, requires_grad=True)
    shift = torch.zeros(2, dtype=torch.float64, device=device, requires_grad=True)  # pixels / 10
    linear = torch.zeros(2, 2, dtype=torch.float64, device=device, requires_grad=True)  # affine: I + linear

    def pixel_matrix():
        """(x, y) homogeneous: fixed pixel -> moving pixel, about the image centres."""
        c, s = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
        lin = rot @ (torch.eye(2, dtype=torch.float64, device=device) + linear) if transform == "affine" else rot
        t = centre_m + 10.0 * shift - lin @ centre_f
        top = torch.cat([lin, t[:, None]], dim=1)
        return torch.cat([top, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64, device=device)])

    def theta():
        return (n_moving @ pixel_matrix() @ n_fixed_inv)[:2].to(dtype)[None]

    def warp(img, size, displacement=None):
        grid = F.affine_grid(theta(), (1, 1) + tuple(size), align_corners=True)
        if displacement is not None:
            field_ = F.interpolate(displacement, size=tuple(size), mode="bicubic", align_corners=True)
            grid = grid + field_.permute(0, 2, 3, 1)
        warped = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        cover = F.grid_sample(torch.ones_like(img), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return warped, cover

    params = [angle, shift] + ([linear] if transform == "affine" else [])
    history = []
    for factor in levels:  # transform, coarse to fine, global NCC
        f_l, m_l = _smooth_downsample(fixed, factor), _smooth_downsample(moving, factor)
        optimiser = torch.optim.Adam(params, lr=learning_rate)
        for _ in range(iterations):
            optimiser.zero_grad()
            warped, cover = warp(m_l, f_l.shape[-2:])
            loss = 1 - _weighted_ncc(warped, f_l, (cover > 0.999).to(dtype))
            loss.backward()
            optimiser.step()
        history.append({"level": factor, "stage": transform, "loss": loss.item()})

    displacement = None
    if deformable:
        grid_shape = (max(2, math.ceil(hf / grid_step)), max(2, math.ceil(wf / grid_step)))
        displacement = torch.zeros((1, 2) + grid_shape, dtype=dtype, device=device, requires_grad=True)
        for p in params:
            p.requires_grad_(False)
        for factor in [f for f in levels if f <= 2] or [1]:
            f_l, m_l = _smooth_downsample(fixed, factor), _smooth_downsample(moving, factor)
            optimiser = torch.optim.Adam([displacement], lr=learning_rate * 0.05)
            for _ in range(iterations):
                optimiser.zero_grad()
                warped, cover = warp(m_l, f_l.shape[-2:], displacement)
                dy = displacement[:, :, 1:, :] - displacement[:, :, :-1, :]
                dx = displacement[:, :, :, 1:] - displacement[:, :, :, :-1]
                # gradient penalty in pixels of displacement per grid step
                scale = (max(wf, hf) / 2.0) ** 2
                penalty = scale * ((dy**2).mean() + (dx**2).mean())
                loss = 1 - _local_ncc(warped, f_l, (cover > 0.999).to(dtype)) + smoothness * penalty
                loss.backward()
                optimiser.step()
            history.append({"level": factor, "stage": "displacement", "loss": loss.item()})

    with torch.no_grad():
        stack = torch.as_tensor(image.astype(np.float32), device=device)[None]
        grid = F.affine_grid(theta(), (1, 1, hf, wf), align_corners=True)
        max_shift_px = 0.0
        if displacement is not None:
            field_ = F.interpolate(displacement, size=(hf, wf), mode="bicubic", align_corners=True)
            grid = grid + field_.permute(0, 2, 3, 1)
            max_shift_px = float((field_.abs() * (max(wm, hm) - 1) / 2).max())
        registered = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        cover = F.grid_sample(
            torch.ones_like(stack[:, :1]), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        valid = (cover[0, 0] > 0.999).cpu().numpy()
        registered = registered.cpu().numpy()
        m_xy = pixel_matrix().detach().cpu().numpy()
    registered[:, ~valid] = 0
    return Registration(
        registered=registered,
        valid=valid,
        matrix=_xy_to_rc(m_xy),
        method="learned",
        details={
            "transform": transform,
            "deformable": bool(deformable),
            "levels": list(levels),
            "iterations": iterations,
            "max_displacement_px": round(max_shift_px, 3),
            "device": str(device),
            "history": history,
        },
    )


# --------------------------------------------------------------------------- figures


def checkerboard(a: np.ndarray, b: np.ndarray, squares: int = 8) -> np.ndarray:
    """Alternate squares of two same-shaped images (both scaled to [0, 1] first)."""
    rows, cols = np.indices(a.shape)
    size = max(1, max(a.shape) // squares)
    pick = ((rows // size) + (cols // size)) % 2 == 0
    return np.where(pick, np.clip(_to_unit(a), 0, 1), np.clip(_to_unit(b), 0, 1))


def on_grid(image: np.ndarray, shape) -> np.ndarray:
    """A (Y, X) plane cropped / zero-padded to `shape` (the reference grid, no transform)."""
    out = np.zeros(shape, dtype=np.float32)
    h, w = min(shape[0], image.shape[0]), min(shape[1], image.shape[1])
    out[:h, :w] = image[:h, :w]
    return out


def write_checkerboard_png(path, reference, before, after, ncc_before, ncc_after, title="") -> None:
    """Before / after checkerboards of the reference against the image (one PNG, two panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, moved, label, score in ((axes[0], before, "before", ncc_before), (axes[1], after, "after", ncc_after)):
        ax.imshow(checkerboard(reference, moved), cmap="gray", interpolation="nearest")
        ax.set_title(f"{label} registration: NCC {score:.3f}")
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
