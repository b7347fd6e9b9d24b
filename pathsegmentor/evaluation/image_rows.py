"""One corpus sample through the model's predictor (as a user calls ``segment()``) -> rows of raw counts: pixels
per target, instance AJI/PQ for instance concepts, presence and empty masks for negatives, and cross-prompt
confusions. :func:`~.evaluate.evaluate` aggregates them."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .metrics import aggregated_jaccard_index, confusion, glas_object_scores, panoptic_quality


def _is_instance_category(label: str, settings) -> bool:
    """Counted object by object (``settings.instance_object_types`` of the ontology), as ``segment()`` decides."""
    from ..inference.separation import is_instance_concept

    return is_instance_concept(label, settings)


def evaluate_image(model, sample: dict[str, Any], *, cross_prompts: Sequence[str] = (),
                   instance_metrics: bool = True, instances: str = "auto", tta: bool = False,
                   mpp_scale: float = 1.0, mpp_mode: str = "corpus") -> list[dict[str, Any]]:
    """Rows of raw counts for one corpus sample (see :func:`evaluate`). ``instances``: the instance decoder
    (``segment()``'s choices); ``tta``: flip test-time augmentation; ``mpp_scale``: multiply the working
    µm/px (ablation: 2.0 runs nuclei at 0.5 instead of 0.25) by passing a scaled ``mpp`` to ``segment``;
    ``mpp_mode``: ``"corpus"`` (the corpus' mpp), ``"none"`` (pixel size unknown: nothing rescaled) or ``"auto"``
    (estimated from the image), as a user without the pixel size would run it."""
    labels = sorted(sample["targets"])
    negatives = [n for n in sample.get("negatives", []) if n not in sample["targets"]]
    extra = [p for p in cross_prompts if p not in labels and p not in negatives]
    prompts = labels + negatives + extra
    if not prompts:
        return []
    mpp = sample.get("mpp")
    mpp = None if mpp is None or mpp_mode == "none" else "auto" if mpp_mode == "auto" else mpp / mpp_scale
    from ..inference.predictor import as_predictor

    predictor = as_predictor(model)  # the one predictor of segment(), slides and the viewer
    kw = dict(vocabulary="open", instances=instances if instance_metrics else "none", tta=tta)
    try:
        res = predictor.segment(sample["image"], prompts, mpp=mpp, **kw)
    except ValueError:
        if mpp != "auto":
            raise
        res = predictor.segment(sample["image"], prompts, mpp=None, **kw)  # estimate refused: as a user, unscaled
    rows: list[dict[str, Any]] = []
    base = {"image_id": sample.get("image_id", ""), "source": sample.get("source", "")}
    for k, lb in enumerate(prompts):
        pred = res.masks[k]
        if lb in sample["targets"]:
            gt = np.asarray(sample["targets"][lb], bool)
            ign = (sample.get("ignore") or {}).get(lb)
            c = confusion(pred, gt, None if ign is None else ~np.asarray(ign, bool))
            row = {**base, "kind": "positive", "prompt": lb, "label": lb, "presence": float(res.presence[k]),
                   "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn}
            inst = (sample.get("instances") or {}).get(lb)
            if instance_metrics and inst is not None and _is_instance_category(lb, predictor.settings):
                pinst = res.instances[k] if res.instances is not None and res.instances[k].any() else None
                if pinst is None:  # no instances decoded for it: a watershed of the mask, with the model's settings
                    from ..inference.separation import instance_decoding

                    pinst = instance_decoding(predictor.config, lb, "watershed").decode(pred, None)
                row["aji"] = aggregated_jaccard_index(np.asarray(inst), pinst)
                row.update(panoptic_quality(np.asarray(inst), pinst))
                # the GlaS challenge's object F1 and Dice, with what pooling them over images needs
                row.update({f"glas_{k}": v for k, v in glas_object_scores(np.asarray(inst), pinst).items()})
            rows.append(row)
        if lb in negatives:
            rows.append({**base, "kind": "negative", "prompt": lb, "label": lb, "presence": float(res.presence[k]),
                         "predicted_present": bool(res.presence[k] >= res.thresholds["presence"]),
                         "empty_mask": bool(not pred.any())})
        if lb in cross_prompts:
            for gl in labels:
                if gl == lb:
                    continue
                c = confusion(pred, np.asarray(sample["targets"][gl], bool))
                rows.append({**base, "kind": "cross", "prompt": lb, "label": gl, "presence": float(res.presence[k]),
                             "tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn})
    return rows
