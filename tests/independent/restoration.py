"""Restoration test material made without gpubio: a Cellpose 3 restoration network whose
output is known in closed form, and noisy images of cells with their true masks.

The network is a real Cellpose 3 restoration network (CPnet, 1 input channel, 1 output,
saved as a state dict, as `cellpose.denoise.DenoiseModel(pretrained_model=path)` loads)
with hand-set weights: every layer is zero except one path through the full-resolution
level that applies a 3 x 3 binomial smoothing kernel three times. Batch-norm layers are
exact identities. So for an input x:  output = K * K * K * relu(x)  (zero padding), a
7 x 7 binomial blur that cuts the standard deviation of white noise about 4.4 fold.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

KERNEL = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0
PASSES = 3


def write_smoothing_network(path) -> None:
    """Save the smoothing network (see module doc) in Cellpose 3's restoration format."""
    import torch
    from cellpose.resnet_torch import CPnet

    net = CPnet([1, 32, 64, 128, 256], 1, sz=3, max_pool=True, diam_mean=30.0)
    state = net.state_dict()
    for name, value in state.items():
        if name.endswith("num_batches_tracked"):
            continue
        value.zero_()
        if name.endswith("running_var"):
            value.fill_(1.0 - 1e-5)  # BatchNorm2d's eps: (x - 0) / sqrt(var + eps) = x
    for name, value in state.items():
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and f"{module}.running_var" in state:
            value.fill_(1.0)  # batch-norm scale 1
    kernel = torch.tensor(KERNEL, dtype=torch.float32)
    state["downsample.down.res_down_0.conv.conv_0.2.weight"][0, 0] = kernel
    state["downsample.down.res_down_0.conv.conv_1.2.weight"][0, 0] = kernel
    state["upsample.up.res_up_0.conv.conv_1.conv.2.weight"][0, 0] = kernel
    state["output.2.weight"][0, 0] = 1.0
    # the style vector is normalised by its length: one constant deepest feature keeps it finite
    state["downsample.down.res_down_3.proj.1.bias"][0] = 1.0
    torch.save(state, path)


def smoothing_network_output(x: np.ndarray) -> np.ndarray:
    """What the smoothing network makes of a 2D input, computed with scipy."""
    out = np.maximum(np.asarray(x, dtype=np.float64), 0.0)
    for _ in range(PASSES):
        out = ndimage.correlate(out, KERNEL, mode="constant", cval=0.0)
    return out


def noisy_cells(shape=(2, 300, 340), n_cells=45, radius=(6.0, 10.0), noise=0.6, seed=0):
    """(image uint16 (C, Y, X), true labels (Y, X)): bright ellipses on a dim, uneven
    background with heavy Gaussian noise (`noise` x the cells' brightness above background).

    Cells are placed without overlap (rejection sampling); channel 2 is unrelated texture.
    """
    rng = np.random.default_rng(seed)
    _, height, width = shape
    labels = np.zeros((height, width), np.int32)
    rows, cols = np.mgrid[0:height, 0:width]
    placed = 0
    for _ in range(5000):
        if placed == n_cells:
            break
        ry, rx = rng.uniform(*radius, size=2)
        cy, cx = rng.uniform(radius[1] + 2, height - radius[1] - 2), rng.uniform(radius[1] + 2, width - radius[1] - 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = rows - cy, cols - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1.0
        grown = ndimage.binary_dilation(inside, iterations=3)
        if np.any(labels[grown]):
            continue
        placed += 1
        labels[inside] = placed
    background = 2500 + 150 * np.sin(rows / 70.0) * np.cos(cols / 90.0)
    brightness = rng.uniform(900, 1300, size=placed + 1)
    signal = np.where(labels > 0, brightness[labels], 0.0)
    signal = ndimage.gaussian_filter(signal, 1.0)  # optics: soft edges
    image = np.empty(shape, np.float64)
    image[0] = background + signal + rng.normal(0.0, noise * 1100.0, (height, width))
    image[1] = (
        500 + 200 * ndimage.gaussian_filter(rng.normal(size=(height, width)), 8) + rng.normal(0, 50, (height, width))
    )
    return np.clip(image, 0, 65535).astype(np.uint16), labels
