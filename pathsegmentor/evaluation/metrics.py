"""Segmentation metrics with explicit conventions for empty masks.

Conventions (stated once, used everywhere):
* both prediction and target empty -> Dice = IoU = precision = recall = 1;
* prediction empty, target not -> Dice = IoU = recall = 0, precision = 1 (no false positives);
* target empty, prediction not -> Dice = IoU = precision = 0, recall = 1 (nothing to miss).
Pooled ("pixel") scores sum TP/FP/FN/TN over all images before dividing; per-image scores are means.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, o: "Counts") -> "Counts":
        return Counts(self.tp + o.tp, self.fp + o.fp, self.fn + o.fn, self.tn + o.tn)


def confusion(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> Counts:
    """Pixel confusion counts of boolean masks (``valid`` False pixels are ignored)."""
    p = np.asarray(pred, bool)
    t = np.asarray(target, bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != target shape {t.shape}")
    if valid is not None:
        v = np.asarray(valid, bool)
        p, t = p[v], t[v]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return Counts(tp, fp, fn, int(p.size) - tp - fp - fn)


def scores(c: Counts) -> dict[str, float]:
    """Dice, IoU, pixel accuracy, precision, recall from counts (conventions in the module doc)."""
    def ratio(num: int, den: int, empty: float) -> float:
        return num / den if den else empty

    both_empty = (c.tp + c.fp + c.fn) == 0
    total = c.tp + c.fp + c.fn + c.tn
    return {
        "dice": 1.0 if both_empty else 2 * c.tp / (2 * c.tp + c.fp + c.fn),
        "iou": 1.0 if both_empty else c.tp / (c.tp + c.fp + c.fn),
        "accuracy": ratio(c.tp + c.tn, total, 1.0),
        "precision": ratio(c.tp, c.tp + c.fp, 1.0),
        "recall": ratio(c.tp, c.tp + c.fn, 1.0),
    }


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    return scores(confusion(pred, target))["dice"]


def _relabel(inst: np.ndarray) -> np.ndarray:
    _, inv = np.unique(inst, return_inverse=True)
    return inv.reshape(inst.shape)


def _pairwise(gt: np.ndarray, pred: np.ndarray):
    """Intersections and areas of every (gt instance, pred instance) pair (ids relabelled 1..n)."""
    gt = _relabel(gt)
    pred = _relabel(pred)
    ng, npred = int(gt.max()), int(pred.max())
    inter = np.bincount(gt.ravel() * (npred + 1) + pred.ravel(), minlength=(ng + 1) * (npred + 1))
    inter = inter.reshape(ng + 1, npred + 1)[1:, 1:].astype(np.int64)
    area_g = np.bincount(gt.ravel(), minlength=ng + 1)[1:].astype(np.int64)
    area_p = np.bincount(pred.ravel(), minlength=npred + 1)[1:].astype(np.int64)
    return inter, area_g, area_p


def aggregated_jaccard_index(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI (Kumar et al. 2017) of two instance maps (0 background). Both empty -> 1."""
    inter, ag, ap = _pairwise(gt, pred)
    if ag.size == 0 and ap.size == 0:
        return 1.0
    if ag.size == 0 or ap.size == 0:
        return 0.0
    union = ag[:, None] + ap[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    best = iou.argmax(1)
    used = np.zeros(ap.size, bool)
    c = u = 0
    for g in range(ag.size):
        j = best[g]
        if inter[g, j] > 0:
            c += inter[g, j]
            u += union[g, j]
            used[j] = True
        else:
            u += ag[g]
    u += ap[~used].sum()
    return float(c / u) if u else 1.0


def panoptic_quality(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Detection quality, segmentation quality and PQ with IoU > 0.5 matching (unique by construction)."""
    inter, ag, ap = _pairwise(gt, pred)
    if ag.size == 0 and ap.size == 0:
        return {"dq": 1.0, "sq": 1.0, "pq": 1.0}
    union = ag[:, None] + ap[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    match = iou > 0.5
    tp = int(match.sum())
    fp = ap.size - tp
    fn = ag.size - tp
    sq = float(iou[match].sum() / tp) if tp else 0.0
    dq = tp / (tp + 0.5 * fp + 0.5 * fn) if (tp + fp + fn) else 1.0
    return {"dq": float(dq), "sq": sq, "pq": float(dq * sq)}


def glas_object_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The GlaS challenge's object figures (Sirinukunwattana et al. 2017) of two instance maps (0 background).

    ``f1``: each predicted object is a hit (``tp``) when it covers **more than half** of the true object it overlaps
    most, else a false positive (``fp``); true objects without a hit are misses (``fn``). Looser than ``dq``
    (a hit there needs IoU > 0.5: a predicted gland twice the true one's size is a hit here, not there); the
    published GlaS F1 figures (DCAN, MILD-Net) use this rule. ``object_dice``: the mean of the area-weighted Dice of
    each predicted object with its most-overlapping true object and of each true object with its most-overlapping
    predicted object (0 where an object overlaps none). Both empty -> 1; one empty -> 0. The counts and the
    area-weighted sums (``dice_pred_sum`` / ``area_pred``, ``dice_true_sum`` / ``area_true``) are returned so that
    both figures can be pooled over a set of images, as the challenge computes them (:func:`pool_glas_object_scores`)."""
    inter, ag, ap = _pairwise(gt, pred)
    if ag.size == 0 or ap.size == 0:
        both = float(ag.size == 0 and ap.size == 0)
        return {"f1": both, "object_dice": both, "tp": 0, "fp": int(ap.size), "fn": int(ag.size),
                "dice_pred_sum": 0.0, "area_pred": int(ap.sum()), "dice_true_sum": 0.0, "area_true": int(ag.sum())}
    best_g = inter.argmax(0)  # the true object each predicted one overlaps most
    cols = np.arange(ap.size)
    hit = inter[best_g, cols] * 2 > ag[best_g]
    tp = int(hit.sum())
    fp, fn = int(ap.size) - tp, int(ag.size) - tp
    best_p = inter.argmax(1)  # the predicted object each true one overlaps most
    rows = np.arange(ag.size)
    dice_p = np.where(inter[best_g, cols] > 0, 2 * inter[best_g, cols] / (ag[best_g] + ap), 0.0)
    dice_g = np.where(inter[rows, best_p] > 0, 2 * inter[rows, best_p] / (ag + ap[best_p]), 0.0)
    out = {"tp": tp, "fp": fp, "fn": fn, "dice_pred_sum": float((dice_p * ap).sum()), "area_pred": int(ap.sum()),
           "dice_true_sum": float((dice_g * ag).sum()), "area_true": int(ag.sum())}
    return {**pool_glas_object_scores([out]), **out}


def pool_glas_object_scores(per_image: list[dict]) -> dict[str, float]:
    """``f1`` and ``object_dice`` of :func:`glas_object_scores` pooled over images: counts and area-weighted sums
    added before dividing (every object of the set weighs by its area, as in the GlaS challenge)."""
    tp, fp, fn = (sum(int(r[k]) for r in per_image) for k in ("tp", "fp", "fn"))
    a_p, a_g = (sum(r[k] for r in per_image) for k in ("area_pred", "area_true"))
    if not (tp + fp + fn):
        return {"f1": 1.0, "object_dice": 1.0}
    f1 = 2 * tp / (2 * tp + fp + fn)
    d_p = sum(r["dice_pred_sum"] for r in per_image) / a_p if a_p else 0.0
    d_g = sum(r["dice_true_sum"] for r in per_image) / a_g if a_g else 0.0
    return {"f1": float(f1), "object_dice": 0.5 * (float(d_p) + float(d_g))}
