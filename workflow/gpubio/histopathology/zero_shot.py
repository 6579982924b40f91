"""Zero-shot tile labels from text prompts, as in CLIP / CONCH.

Each class's prompts are embedded, L2-normalised and averaged (then normalised again);
a tile's logits are exp(logit_scale) x the cosine similarity of its image embedding with
each class embedding, and a softmax over the classes gives its probabilities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(min=1e-12)


def class_embeddings(prompt_embeddings: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Class names and one unit vector per class (the mean of its normalised prompt embeddings)."""
    names = list(prompt_embeddings)
    return names, _normalise(np.stack([_normalise(prompt_embeddings[n]).mean(axis=0) for n in names]))


def class_probabilities(image_embeddings: np.ndarray, classes: np.ndarray, logit_scale: float) -> np.ndarray:
    """(tiles, classes) softmax of logit_scale x cosine similarity."""
    logits = logit_scale * _normalise(image_embeddings) @ classes.T
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def label_table(tiles: pd.DataFrame, names: list[str], probabilities: np.ndarray) -> pd.DataFrame:
    """One row per tile: its coordinates, the most probable class and every class's probability."""
    table = tiles[["x", "y", "size_level0", "tissue_fraction"]].reset_index(drop=True).copy()
    table["label"] = [names[i] for i in probabilities.argmax(axis=1)]
    for i, name in enumerate(names):
        table[f"p_{name}"] = probabilities[:, i].round(6)
    return table


def slide_fractions(labels: pd.DataFrame, names: list[str]) -> dict[str, float]:
    """Fraction of a slide's tissue tiles given each class (they sum to 1)."""
    counts = labels["label"].value_counts()
    return {name: float(counts.get(name, 0)) / len(labels) for name in names}
