"""Shared by the object benches (``instances.py``, ``baseline_unet.py``, ``learning_curve.py``): which category each
source is scored on, and pooled Dice plus mean AJI / PQ / DQ (object F1 at IoU 0.5) / SQ per (source, method)."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

import numpy as np

TASKS = {"monuseg": "nuclei", "consep": "nuclei", "glas": "gland", "ebhi_seg": "gland"}


def validation_items(corpus, sources: Iterable[str] = (), limit: int = 0, split: str = "validation") -> Iterator[tuple]:
    """``(source, label, sample, gt bool [H, W], gt instances or None)`` for every image of ``split`` whose source is
    scored (``TASKS``; only ``sources`` when given), at most ``limit`` per source (0: all). EBHI-Seg labels are
    epithelium masks, not gland instances: no instance ground truth there."""
    table = corpus.images[split]
    seen: dict[str, int] = defaultdict(int)
    for i in range(len(table)):
        src = table["source"][i]
        label = TASKS.get(src)
        if label is None or (sources and src not in sources) or (limit and seen[src] >= limit):
            continue
        s = corpus.sample(split, i)
        if label not in s["targets"]:
            continue
        seen[src] += 1
        gt_inst = (s.get("instances") or {}).get(label) if src != "ebhi_seg" else None
        yield src, label, s, np.asarray(s["targets"][label], bool), gt_inst


def model_counts(model, items: Iterable[tuple], *, tta: bool = False, name: str | None = None,
                 counts: dict | None = None) -> dict[tuple[str, str], list]:
    """The model's ``segment()`` (its shipped instance decoder) on ``validation_items``, as ``score_rows`` input."""
    from pathsegmentor.evaluation.metrics import confusion

    counts = defaultdict(list) if counts is None else counts
    for src, label, s, gt, gt_inst in items:
        res = model.segment(s["image"], [label], mpp=s["mpp"], vocabulary="open", tta=tta)
        inst = res.instances[0] if res.instances is not None else None
        counts[(src, name or model.name)].append((confusion(res.masks[0], gt), gt_inst, inst))
    return counts


def score_rows(counts: dict[tuple[str, str], list]) -> list[dict]:
    """``(source, method) -> [(Counts, gt instances or None, predicted instances), ...]`` -> one row each."""
    from pathsegmentor.evaluation.metrics import (aggregated_jaccard_index, glas_object_scores, panoptic_quality,
                                                  pool_glas_object_scores, scores)

    rows = []
    for (src, name), items in sorted(counts.items()):
        pooled = items[0][0]
        for c, _, _ in items[1:]:
            pooled = pooled + c
        per_image = [scores(c)["dice"] for c, _, _ in items]
        row = {"source": src, "method": name, "images": len(items), "dice": round(scores(pooled)["dice"], 4),
               "dice_mean": round(float(np.mean(per_image)), 4), "dice_sd": round(float(np.std(per_image)), 4)}
        with_inst = [(g, p) for _, g, p in items if g is not None and p is not None]
        if with_inst:
            aji = [aggregated_jaccard_index(np.asarray(g), p) for g, p in with_inst]
            row["aji"] = round(float(np.mean(aji)), 4)
            row["aji_sd"] = round(float(np.std(aji)), 4)
            pq = [panoptic_quality(np.asarray(g), p) for g, p in with_inst]
            for k in ("pq", "dq", "sq"):
                row[k] = round(float(np.mean([q[k] for q in pq])), 4)
            glas = [glas_object_scores(np.asarray(g), p) for g, p in with_inst]  # the GlaS challenge's rule
            pooled_glas = pool_glas_object_scores(glas)  # pooled over the images, as the challenge does
            row["f1_glas"] = round(pooled_glas["f1"], 4)
            row["f1_glas_mean"] = round(float(np.mean([q["f1"] for q in glas])), 4)
            row["object_dice_glas"] = round(pooled_glas["object_dice"], 4)
        rows.append(row)
    return rows


def print_table(rows: Iterable[dict]) -> None:
    print("| source | method | images | Dice pooled | Dice mean ± sd | AJI ± sd | PQ | DQ (object F1) | SQ "
          "| F1, GlaS rule (per-image mean) | object Dice, GlaS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        aji = f"{r['aji']} ± {r['aji_sd']}" if "aji" in r else ""
        print(f"| {r['source']} | {r['method']} | {r['images']} | {r['dice']} | {r['dice_mean']} ± {r['dice_sd']} "
              f"| {aji} | {r.get('pq', '')} | {r.get('dq', '')} | {r.get('sq', '')} | {r.get('f1_glas', '')} "
              f"({r.get('f1_glas_mean', '')}) | {r.get('object_dice_glas', '')} |")
