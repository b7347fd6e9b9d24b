"""Metrics against values worked out by hand on small arrays, including the empty-mask conventions."""
from __future__ import annotations

import numpy as np
import pytest

from pathsegmentor.evaluation.evaluate import summarize
from pathsegmentor.inference.instances import separate_instances
from pathsegmentor.evaluation.metrics import (Counts, aggregated_jaccard_index, confusion, glas_object_scores,
                                              panoptic_quality, pool_glas_object_scores, scores)


def test_confusion_and_scores_by_hand():
    pred = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0]], bool)
    gt = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], bool)
    c = confusion(pred, gt)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 1, 1, 5)
    s = scores(c)
    assert s["dice"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx(2 / 4)
    assert s["accuracy"] == pytest.approx(7 / 9)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)


def test_valid_mask_excludes_pixels():
    pred = np.array([1, 1, 0, 0], bool)
    gt = np.array([1, 0, 0, 1], bool)
    c = confusion(pred, gt, valid=np.array([1, 0, 1, 0], bool))
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 0, 0, 1)


@pytest.mark.parametrize("pred,gt,expected", [
    ([0, 0], [0, 0], {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}),  # both empty
    ([0, 0], [1, 0], {"dice": 0.0, "iou": 0.0, "precision": 1.0, "recall": 0.0}),  # missed everything
    ([1, 0], [0, 0], {"dice": 0.0, "iou": 0.0, "precision": 0.0, "recall": 1.0}),  # hallucinated
])
def test_empty_conventions(pred, gt, expected):
    s = scores(confusion(np.array(pred, bool), np.array(gt, bool)))
    for k, v in expected.items():
        assert s[k] == v, k


def test_pooled_vs_mean_in_summary():
    rows = [
        {"kind": "positive", "source": "s", "label": "nuclei", "prompt": "nuclei", "tp": 1, "fp": 0, "fn": 1, "tn": 2},
        {"kind": "positive", "source": "s", "label": "nuclei", "prompt": "nuclei", "tp": 9, "fp": 1, "fn": 0, "tn": 0},
        {"kind": "negative", "source": "s", "label": "gland", "prompt": "gland", "predicted_present": False,
         "empty_mask": True},
        {"kind": "negative", "source": "s", "label": "gland", "prompt": "gland", "predicted_present": True,
         "empty_mask": False},
    ]
    t = summarize(rows)
    row = t["by_category"][0]
    # pooled: tp 10, fp 1, fn 1 -> 20/22; mean of 2/3 and 18/19
    assert row["pixel_dice"] == pytest.approx(round(20 / 22, 4))
    assert row["mean_dice"] == pytest.approx(round((2 / 3 + 18 / 19) / 2, 4))
    assert t["negatives"][0]["presence_accuracy"] == 0.5
    assert "f1_glas" not in row  # no instance rows, no object figures
    rows[0].update(glas_tp=1, glas_fp=0, glas_fn=3, glas_f1=0.4, glas_dice_pred_sum=10.0, glas_area_pred=10,
                   glas_dice_true_sum=8.0, glas_area_true=40)
    rows[1].update(glas_tp=4, glas_fp=2, glas_fn=0, glas_f1=0.8, glas_dice_pred_sum=30.0, glas_area_pred=60,
                   glas_dice_true_sum=40.0, glas_area_true=40)
    row = summarize(rows)["by_category"][0]
    assert row["f1_glas"] == pytest.approx(round(2 * 5 / (2 * 5 + 2 + 3), 4))  # counts pooled over images
    assert row["mean_f1_glas"] == pytest.approx(0.6)
    assert row["object_dice_glas"] == pytest.approx(round(0.5 * (40 / 70 + 48 / 80), 4))  # area-weighted, pooled
    assert Counts(1, 2, 3, 4) + Counts(1, 1, 1, 1) == Counts(2, 3, 4, 5)


def test_aji_and_pq_by_hand():
    gt = np.zeros((10, 10), int)
    gt[1:4, 1:4] = 1  # 9 px
    gt[6:9, 6:9] = 2  # 9 px
    pred = np.zeros((10, 10), int)
    pred[1:4, 1:3] = 5  # 6 px inside gt 1 (IoU 6/9)
    pred[6:9, 6:9] = 7  # exact
    pred[0, 9] = 8  # a false positive pixel
    # AJI: intersections 6 + 9 = 15; unions 9 + 9 + unmatched pred 1 = 19
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(15 / 19)
    pq = panoptic_quality(gt, pred)
    # matches (IoU > 0.5): both; FP = 1 -> DQ = 2 / (2 + 0.5) ; SQ = (6/9 + 1) / 2
    assert pq["dq"] == pytest.approx(2 / 2.5)
    assert pq["sq"] == pytest.approx((6 / 9 + 1) / 2)
    assert pq["pq"] == pytest.approx(pq["dq"] * pq["sq"])
    assert aggregated_jaccard_index(np.zeros((3, 3), int), np.zeros((3, 3), int)) == 1.0
    assert aggregated_jaccard_index(gt, np.zeros_like(gt)) == 0.0


def test_glas_object_scores_by_hand():
    """The GlaS challenge's object F1 and object Dice on hand-made glands: a prediction twice the true gland's size
    is a hit by the GlaS rule (covers all of it) but not at IoU > 0.5; one covering under half of its gland is not;
    two true glands merged into one prediction give one hit and one miss."""
    gt = np.zeros((20, 40), int)
    gt[2:6, 2:6] = 1  # 16 px, predicted twice too large (32 px covering it): IoU 0.5, GlaS hit
    gt[10:14, 2:6] = 2  # 16 px, predicted 6 px of it: no hit
    gt[2:6, 20:24] = 3  # 16 px } merged into one prediction of 40 px (covers 3 wholly, most overlap: 3)
    gt[2:6, 26:30] = 4  # 16 px }
    pred = np.zeros_like(gt)
    pred[2:10, 2:6] = 1  # 32 px
    pred[10:12, 2:5] = 2  # 6 px inside gland 2
    pred[2:6, 20:30] = 3  # 40 px: all of 3 and 4 (intersections 16 and 16; ties go to the first: gland 3)
    pred[17:19, 35:38] = 4  # on no gland
    s = glas_object_scores(gt, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 2)
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    assert panoptic_quality(gt, pred)["dq"] < s["f1"]  # IoU 32/32=0.5 is no match at IoU > 0.5
    d_pred = (32 * (2 * 16 / 48) + 6 * (2 * 6 / 22) + 40 * (2 * 16 / 56) + 6 * 0) / 84
    d_gt = (16 * (2 * 16 / 48) + 16 * (2 * 6 / 22) + 16 * (2 * 16 / 56) + 16 * (2 * 16 / 56)) / 64
    assert s["object_dice"] == pytest.approx((d_pred + d_gt) / 2)
    assert glas_object_scores(gt, gt)["f1"] == glas_object_scores(gt, gt)["object_dice"] == 1.0
    # pooled over two images (the challenge's way): counts and area-weighted sums added before dividing
    both = pool_glas_object_scores([s, glas_object_scores(gt, gt)])
    assert both["f1"] == pytest.approx(2 * 6 / (2 * 6 + 2 + 2))
    assert both["object_dice"] == pytest.approx(0.5 * ((d_pred * 84 + 64) / (84 + 64) + (d_gt * 64 + 64) / 128))
    assert glas_object_scores(np.zeros_like(gt), np.zeros_like(gt))["f1"] == 1.0
    assert glas_object_scores(gt, np.zeros_like(gt))["f1"] == glas_object_scores(gt, np.zeros_like(gt))["object_dice"] == 0.0


def test_separate_instances_splits_touching_disks_keeps_elongated():
    yy, xx = np.mgrid[:40, :80]
    two = ((yy - 20) ** 2 + (xx - 20) ** 2 < 100) | ((yy - 20) ** 2 + (xx - 37) ** 2 < 100)
    labels = separate_instances(two)
    assert len(np.unique(labels)) - 1 == 2
    bar = np.zeros((40, 80), bool)
    bar[4:36, 10:70] = True
    assert len(np.unique(separate_instances(bar))) - 1 == 1
    assert separate_instances(np.zeros((5, 5), bool)).max() == 0
