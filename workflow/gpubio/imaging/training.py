"""Training a Cellpose model that is judged on images it did not learn from.

Validation images come from a folder of their own (``imaging.training.validation``) or, when
there is none, from the training images: the last ``validation_fraction`` of each one along
its longer side is held out as a strip, so a single annotated image still gives both. The
model is scored there (average precision at IoU 0.5 and 0.75) every ``validate_every`` steps
while it trains and at the end, beside two baselines on the same images: a classical Otsu +
watershed segmentation (gpubio.imaging.classical) and, when its weights are on disk, a
built-in Cellpose model. A trained model that does not beat the classical baseline is a
warning, in the log and in the report's figure, with what to try.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from gpubio.imaging.cellpose_models import ModelError

log = logging.getLogger("gpubio")

THRESHOLDS = (0.5, 0.75)
CLASSICAL = "otsu_watershed"
TRAINED = "trained"
TABLE_COLUMNS = ["model", "step", "crops_seen", "train_loss", "ap_50", "ap_75", "objects", "predicted"]


@dataclass
class ImageSet:
    """Network inputs ((2, Y, X) in [0, 1]), their label images and where each came from."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def add(self, image: np.ndarray, labels: np.ndarray, name: str) -> None:
        self.images.append(image)
        self.labels.append(labels)
        self.names.append(name)

    def objects(self) -> int:
        return int(sum(np.count_nonzero(np.bincount(lab.ravel())[1:]) for lab in self.labels))


def hold_out(images: ImageSet, fraction: float, diameter: float) -> tuple[ImageSet, ImageSet]:
    """(training, validation): the last `fraction` of each image along its longer side (at
    least two object diameters) becomes a validation strip; an image too small to leave two
    diameters on both sides stays whole in training.

    The cut runs along the line with the fewest labelled pixels within a diameter of that
    position: between cells where there is room, so that few cells are cut in two and few
    slivers of cells line the strip's edge (a sliver below segmentation's min_size is a cell
    no model can be asked to find).
    """
    train, validation = ImageSet(), ImageSet()
    minimum = math.ceil(2 * diameter)
    for x, y, name in zip(images.images, images.labels, images.names):
        axis = 0 if y.shape[0] >= y.shape[1] else 1
        length = y.shape[axis]
        target = length - max(round(fraction * length), minimum)
        if target < minimum:
            train.add(x, y, name)
            continue
        lines = np.count_nonzero(y, axis=1 - axis)  # labelled pixels on each line across the cut
        window = range(
            max(minimum, target - math.ceil(diameter)), min(length - minimum, target + math.ceil(diameter)) + 1
        )
        cut = min(window, key=lambda i: (lines[i], abs(i - target)))
        index = (lambda part: (part, slice(None))) if axis == 0 else (lambda part: (slice(None), part))
        keep, held = index(slice(None, cut)), index(slice(cut, None))
        train.add(x[(slice(None), *keep)], y[keep], name)
        side = "rows" if axis == 0 else "columns"
        validation.add(x[(slice(None), *held)], y[held], f"{name} {side} {cut}-{length}")
    if not validation.images:
        raise ModelError(
            f"the training images are too small to hold out validation strips (each needs at least "
            f"{2 * minimum} px along its longer side, with objects of {diameter:.0f} px); put validation images "
            "in a folder and set imaging.training.validation to it, or set imaging.training.validation_fraction: 0"
        )
    return train, validation


def pooled_scores(truths: list[np.ndarray], predictions: list[np.ndarray]) -> dict:
    """Average precision at each IoU threshold over all images together: TP / (TP + FP + FN)."""
    from gpubio.imaging.metrics import average_precision

    scores = {}
    for threshold in THRESHOLDS:
        counts = [average_precision(t, p, threshold) for t, p in zip(truths, predictions)]
        tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp", "fp", "fn"))
        scores[f"ap_{round(threshold * 100)}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
    scores["objects"] = sum(c["true"] for c in counts)
    scores["predicted"] = sum(c["predicted"] for c in counts)
    return scores


class Judge:
    """Scores segmentations of the validation images; collects one table row per score."""

    def __init__(self, validation: ImageSet, diameter: float, segmenter_settings: dict, device, cellpose):
        self.validation = validation
        self.diameter = diameter  # the training objects' median: what every baseline is told
        self.settings = segmenter_settings  # CellposeSegmenter's flow/cellprob thresholds, min_size, ...
        self.device = device
        self.cellpose = cellpose
        self.rows: list[dict] = []

    def classical(self) -> dict:
        from gpubio.imaging.classical import otsu_watershed

        predictions = [otsu_watershed(x[0], self.diameter) for x in self.validation.images]
        return self._row(CLASSICAL, pooled_scores(self.validation.labels, predictions))

    def cellpose_model(self, name: str, choice, diameter: float = 0.0, **row) -> dict:
        from gpubio.imaging.cellpose_models import CellposeSegmenter

        settings = dict(self.settings, diameter=diameter or self.settings.get("diameter", 0.0))
        segmenter = CellposeSegmenter(choice, self.device, cellpose=self.cellpose, **settings)
        predictions = [segmenter.segment(x) for x in self.validation.images]
        return self._row(name, pooled_scores(self.validation.labels, predictions), **row)

    def _row(self, model: str, scores: dict, **row) -> dict:
        record = {"model": model, "step": None, "crops_seen": None, "train_loss": None} | row | scores
        self.rows.append(record)
        return record

    def baseline(self, name: str) -> dict | None:
        return next((r for r in self.rows if r["model"] == name), None)

    def trained(self) -> list[dict]:
        return [r for r in self.rows if r["model"] == TRAINED]


def builtin_baseline(base_model: str, cellpose, download: bool):
    """The built-in model to compare with: `base_model` when it names one, else the installed
    generalist (cyto3 / cpsam); None (and a log line) when its weights are not on disk."""
    from gpubio.imaging.cellpose_models import builtin_models, generalist_model, resolve_model

    name = base_model if base_model in builtin_models(cellpose) else generalist_model(cellpose)
    try:
        return resolve_model(name, cellpose, allow_download=download)
    except ModelError as error:
        log.info("no built-in baseline: %s", str(error).split(";")[0])
        return None


def verdict(judge: Judge) -> list[str]:
    """Warnings about the trained model's final validation score, each with what to try."""
    trained = judge.trained()
    if not trained:
        return []
    final = trained[-1]
    warnings = []
    if final["objects"] == 0:
        return [
            "the validation images hold no labelled object, so the trained model was not judged; "
            "give imaging.training.validation images with cells, or annotate more of the training images"
        ]
    classical = judge.baseline(CLASSICAL)
    if classical and final["ap_50"] < classical["ap_50"]:
        warnings.append(
            f"the trained model scores AP@0.5 {final['ap_50']:.2f} on the validation images, below the classical "
            f"Otsu + watershed baseline ({classical['ap_50']:.2f}): it has not learnt these cells. Try more "
            "imaging.training.steps, more annotated images (imaging.training.images), fine-tuning a built-in model "
            "(imaging.training.base_model: cyto3 with Cellpose 3, its weights staged), and check that the masks "
            "match the images and imaging.segmentation.channels"
        )
    for row in judge.rows:
        if row["model"] not in (TRAINED, CLASSICAL) and final["ap_50"] < row["ap_50"]:
            warnings.append(
                f"the built-in model {row['model']} scores AP@0.5 {row['ap_50']:.2f} on the validation images, "
                f"above the trained model ({final['ap_50']:.2f}): set imaging.segmentation.model: {row['model']}, "
                f"or fine-tune it (imaging.training.base_model: {row['model']})"
            )
    return warnings


def write_validation_table(rows: list[dict], path) -> None:
    import pandas as pd

    from gpubio.atomic import atomic_path

    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    for column in ("step", "crops_seen", "objects", "predicted"):
        table[column] = table[column].astype("Int64")
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")


def write_training_png(path, losses: list[float], judge: Judge | None, warnings: list[str], title: str) -> None:
    """Training loss per step (and its running mean); validation AP per checkpoint with the
    baselines as lines; the warnings in red underneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = np.arange(1, len(losses) + 1)
    left.plot(steps, losses, color="#bbbbbb", lw=0.8, label="per step")
    window = max(1, len(losses) // 20)
    if len(losses) >= window:
        running = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(steps[window - 1 :], running, color="#4477aa", label=f"mean of {window} steps")
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend(fontsize=8)
    trained = judge.trained() if judge else []
    if trained:
        x = [r["step"] for r in trained]
        for key, style in (("ap_50", "-o"), ("ap_75", "--o")):
            right.plot(x, [r[key] for r in trained], style, color="#228833", label=f"trained, {_label(key)}")
        colours = iter(["#ee6677", "#aa3377", "#ccbb44"])
        for row in (r for r in judge.rows if r["model"] != TRAINED):
            colour = next(colours, "#666666")
            right.axhline(row["ap_50"], color=colour, ls="-", lw=1, label=f"{row['model']}, AP@0.5")
            right.axhline(row["ap_75"], color=colour, ls="--", lw=1, label=f"{row['model']}, AP@0.75")
        right.set_ylim(0, 1)
        right.set_xlabel("step")
        right.set_ylabel("validation average precision")
        right.legend(fontsize=7, loc="lower right")
    else:
        right.text(0.5, 0.5, "no validation images", ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    fig.suptitle(title)
    bottom = 0.08
    if warnings:
        import textwrap

        text = "\n".join(textwrap.fill("WARNING: " + w, 160) for w in warnings)
        lines = text.count("\n") + 1
        bottom = 0.08 + 0.045 * lines
        fig.text(0.01, 0.01, text, color="#cc0000", fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _label(key: str) -> str:
    return "AP@0." + key.split("_")[1].rstrip("0")
