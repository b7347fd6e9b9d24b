"""CellSAM's reporting: pixel-level accuracy, recall and precision (Ma et al. 2024), beside Dice.

Definitions, over the pixels of a binary mask (foreground = the prompted class):

* accuracy  = (TP + TN) / (TP + TN + FP + FN)
* recall    = TP / (TP + FN)
* precision = TP / (TP + FP)
* Dice      = 2 TP / (2 TP + FP + FN)

The paper reports the *mean* of each score over the test images ("mean accuracy, recall and
precision"); :func:`evaluate_masks` gives that mean and the pooled score (counts summed over all
images first). Empty-mask conventions are those of :mod:`pathsegmentor.evaluation.metrics` (both empty: 1;
nothing predicted: precision 1, recall 0; nothing to find: recall 1, precision 0 if anything was
predicted), which this module reuses.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .metrics import Counts, confusion, scores

CELLSAM_METRICS = ("accuracy", "recall", "precision", "dice")


def cellsam_scores(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Accuracy, recall, precision and Dice of one boolean mask pair (``valid`` False pixels ignored)."""
    s = scores(confusion(pred, target, valid))
    return {k: s[k] for k in CELLSAM_METRICS}


def evaluate_masks(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float] | int]:
    """Score ``(prediction, target)`` boolean mask pairs, one per image.

    Returns ``{"mean": {metric: mean over images}, "pooled": {metric: from summed counts},
    "n_images": N}`` with the metrics of :data:`CELLSAM_METRICS`.
    """
    total = Counts()
    per_image: list[dict[str, float]] = []
    for pred, target in pairs:
        c = confusion(pred, target)
        total = total + c
        s = scores(c)
        per_image.append({k: s[k] for k in CELLSAM_METRICS})
    if not per_image:
        raise ValueError("evaluate_masks needs at least one (prediction, target) pair")
    pooled = scores(total)
    return {"mean": {k: float(np.mean([s[k] for s in per_image])) for k in CELLSAM_METRICS},
            "pooled": {k: pooled[k] for k in CELLSAM_METRICS}, "n_images": len(per_image)}
