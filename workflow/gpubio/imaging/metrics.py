"""Segmentation accuracy against ground-truth masks."""

from __future__ import annotations

import numpy as np


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Intersection over union of every (true label, predicted label) pair; row/col 0 = background."""
    true, pred = np.asarray(true, dtype=np.int64).ravel(), np.asarray(pred, dtype=np.int64).ravel()
    nt, npred = int(true.max()) + 1, int(pred.max()) + 1
    overlap = np.bincount(true * npred + pred, minlength=nt * npred).reshape(nt, npred)
    area_t, area_p = overlap.sum(axis=1, keepdims=True), overlap.sum(axis=0, keepdims=True)
    union = area_t + area_p - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, overlap / union, 0.0)


def average_precision(true: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> dict:
    """Cellpose / StarDist average precision at an IoU threshold: TP / (TP + FP + FN).

    With a threshold >= 0.5 a true object matches at most one prediction, so matches are
    simply the pairs above the threshold.
    """
    if threshold < 0.5:
        raise ValueError("threshold must be >= 0.5 (one-to-one matching)")
    iou = iou_matrix(true, pred)[1:, 1:]
    n_true = int(np.count_nonzero(np.bincount(np.asarray(true).ravel())[1:]))
    n_pred = int(np.count_nonzero(np.bincount(np.asarray(pred).ravel())[1:]))
    tp = int((iou > threshold).sum())
    fp, fn = n_pred - tp, n_true - tp
    total = tp + fp + fn
    return {"ap": tp / total if total else 1.0, "tp": tp, "fp": fp, "fn": fn, "true": n_true, "predicted": n_pred}
