"""Figures of the histopathology module: the slide heatmap and the class fractions of all slides."""

from __future__ import annotations

import numpy as np
import pandas as pd

FIGURE_MAX_SIDE = 1024  # px of the slide shown; enough for tiles of a few px each


def class_colours(names: list[str]) -> dict[str, tuple]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(names)}


def write_heatmap_png(
    path, thumbnail: np.ndarray, mask: np.ndarray, downsample: float, labels: pd.DataFrame, names: list[str], title: str
) -> None:
    """Left: the slide with the tissue outline; right: each tile in its label's colour,
    opaque in proportion to the label's probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from gpubio.atomic import atomic_path

    stride = max(1, int(np.ceil(max(thumbnail.shape[:2]) / FIGURE_MAX_SIDE)))
    thumbnail, mask, downsample = thumbnail[::stride, ::stride], mask[::stride, ::stride], downsample * stride
    colours = class_colours(names)
    overlay = np.zeros((*thumbnail.shape[:2], 4), np.float32)
    for row in labels.itertuples():
        x0, y0 = int(row.x / downsample), int(row.y / downsample)
        side = max(1, int(round(row.size_level0 / downsample)))
        probability = getattr(row, f"p_{row.label}")
        overlay[y0 : y0 + side, x0 : x0 + side] = (*colours[row.label][:3], 0.25 + 0.6 * probability)
    aspect = thumbnail.shape[1] / thumbnail.shape[0]
    fig, axes = plt.subplots(1, 2, figsize=(2 * 4.5 * min(aspect, 2), 4.5 + 0.6), squeeze=True)
    axes[0].imshow(thumbnail)
    axes[0].contour(mask, levels=[0.5], colors="black", linewidths=0.8)
    axes[0].set_title("tissue (outline)")
    axes[1].imshow(thumbnail)
    axes[1].imshow(overlay)
    axes[1].set_title(f"zero-shot labels ({len(labels)} tiles)")
    for ax in axes:
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=colours[n], label=n) for n in names], loc="lower center", ncol=min(len(names), 6))
    fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_fractions_png(path, fractions: pd.DataFrame) -> None:
    """Stacked bars: the fraction of each slide's tissue tiles per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path

    names = [c for c in fractions.columns if c not in ("sample", "tiles")]
    colours = class_colours(names)
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(fractions) + 2), 4))
    bottom = np.zeros(len(fractions))
    for name in names:
        ax.bar(fractions["sample"], fractions[name], bottom=bottom, color=colours[name], label=name)
        bottom += fractions[name].to_numpy()
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of tissue tiles")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
