"""The prompt issue's targets on a corpus split (run by ``bench/prompts.py --data``, or alone).

    python bench/prompt_targets.py [--model pathsegmentor-tiny] [--data runs/pathseg-shared] [--split validation]

Prompts go to the model as they are (``vocabulary="open"``), so these measure the model, not the prompt
policy (which refuses out-of-vocabulary phrases before the model sees them).

* **presence**: image-level MCC with its confusion counts over image–prompt pairs of certain answer
  (:mod:`pathsegmentor.evaluation.presence`: annotated categories; exhaustive-absent categories, held-out
  phrases from outside pathology, other-organ concepts), at the model's presence threshold;
  empty-mask rates for the non-pathology phrases and the other-organ concepts;
* **paraphrases**: pooled Dice of each synonym of a category against the canonical name's, same images;
* **cross-category**: Dice of "gland" against the nuclei of MoNuSeg/CoNSeP tiles, and of "nuclei" against
  the glands of GlaS tiles (should be low: the other category's ground truth);
* **geometric**: a box around one gland (GlaS instances): IoU with it and the fraction of the mask inside
  the box; a point inside one nucleus (MoNuSeg instances): IoU with it. Up to ``--objects`` per image.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


def _indices(table, limit: int) -> range:
    """The first ``limit`` rows of ``table`` (all when 0)."""
    return range(min(limit, len(table)) if limit else len(table))


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


def run(model, corpus, split: str, *, objects: int = 3, limit: int = 0, seed: int = 0,
        geometric_only: bool = False, sources: list[str] | None = None) -> dict:
    if geometric_only:
        return geometric_figures(model, corpus, split, objects=objects, limit=limit, seed=seed, sources=sources)
    if sources:
        raise ValueError("--source filters the geometric figures only; add --geometric-only")
    from pathsegmentor.evaluation.metrics import confusion, scores
    from pathsegmentor.evaluation.presence import presence_pairs, summarize_pairs
    from pathsegmentor.training.prompt_sampling import negative_phrases

    pairs = presence_pairs(model, corpus, split, phrases=negative_phrases()["heldout"], n_phrases=3, n_organ=2,
                           limit=limit, seed=seed)
    out = {"presence": summarize_pairs(pairs, model.config.inference.presence_threshold)}
    table = corpus.images[split]
    para = defaultdict(lambda: [None, {}])  # label -> [canonical counts, {synonym: counts}]
    cross = defaultdict(lambda: None)
    for i in _indices(table, limit):
        s = corpus.sample(split, i)
        src = s.get("source", "")
        for lb, m in s["targets"].items():
            gt = np.asarray(m, bool)
            if not gt.any():
                continue
            syns = list(corpus.ontology.categories[lb].synonyms) if lb in corpus.ontology.categories else []
            if not syns:
                continue
            res = model.segment(s["image"], [lb, *syns], mpp=s.get("mpp"), vocabulary="open", instances="none")
            c0 = confusion(res.masks[0], gt)
            para[lb][0] = c0 if para[lb][0] is None else para[lb][0] + c0
            for k, syn in enumerate(syns, start=1):
                c = confusion(res.masks[k], gt)
                para[lb][1][syn] = c if syn not in para[lb][1] else para[lb][1][syn] + c
        other = {"glas": ("nuclei", "gland")}.get(src, ("gland", "nuclei") if src in ("monuseg", "consep") else None)
        if other and other[1] in s["targets"]:
            res = model.segment(s["image"], [other[0]], mpp=s.get("mpp"), vocabulary="open", instances="none")
            c = confusion(res.masks[0], np.asarray(s["targets"][other[1]], bool))
            key = f"'{other[0]}' vs {other[1]} ({src})"
            cross[key] = c if cross[key] is None else cross[key] + c
    out["paraphrases"] = {lb: {"canonical_dice": round(scores(c0)["dice"], 4),
                               "worst_gap": round(max(scores(c0)["dice"] - scores(c)["dice"] for c in syn.values()), 4),
                               "synonyms": {k: round(scores(c)["dice"], 4) for k, c in syn.items()}}
                          for lb, (c0, syn) in sorted(para.items()) if c0 is not None}
    out["cross_category_dice"] = {k: round(scores(c)["dice"], 4) for k, c in sorted(cross.items())}
    out.update(geometric_figures(model, corpus, split, objects=objects, limit=limit, seed=seed))
    return out


def geometric_figures(model, corpus, split: str, *, objects: int = 3, limit: int = 0, seed: int = 0,
                      sources: list[str] | None = None) -> dict:
    """A box around one gland (GlaS) and a point inside one nucleus (MoNuSeg): mean IoU with the object
    (``sources``: only images of these sources; ``limit`` counts those)."""
    rng = np.random.default_rng(seed)
    table = corpus.images[split]
    rows = [i for i in range(len(table)) if not sources or table["source"][i] in sources]
    box_iou, box_inside, point_iou = [], [], []
    for i in rows[:limit] if limit else rows:
        s = corpus.sample(split, i)
        src = s.get("source", "")
        kind = {"glas": ("gland", "box"), "monuseg": ("nuclei", "point")}.get(src)
        inst = (s.get("instances") or {}).get(kind[0]) if kind else None
        if inst is not None:
            inst = np.asarray(inst)
            ids, areas = np.unique(inst[inst > 0], return_counts=True)
            ids = ids[areas >= 30]
            for oid in rng.choice(ids, min(objects, len(ids)), replace=False) if len(ids) else []:
                obj = inst == oid
                ys, xs = np.nonzero(obj)
                if kind[1] == "box":
                    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
                    res = model.segment(s["image"], boxes=box, mpp=s.get("mpp"))
                    m = res.masks[0]
                    inside = np.zeros_like(m)
                    inside[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True
                    box_iou.append(_iou(m, obj))
                    box_inside.append(float(m[inside].sum() / max(1, m.sum())))
                else:
                    j = rng.integers(0, len(ys))
                    res = model.segment(s["image"], points=np.array([[[xs[j] + 0.5, ys[j] + 0.5]]]),
                                        point_labels=np.array([[1]]), mpp=s.get("mpp"))
                    point_iou.append(_iou(res.masks[0], obj))
    return {"box_around_one_gland": {"n": len(box_iou), "mean_iou": _mean(box_iou),
                                     "mean_fraction_inside_box": _mean(box_inside)},
            "point_on_one_nucleus": {"n": len(point_iou), "mean_iou": _mean(point_iou)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="validation")
    ap.add_argument("--objects", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--geometric-window", type=int, default=None,
                    help="override the model's inference.geometric_window (px; 0: the whole image when it fits)")
    ap.add_argument("--geometric-mode", choices=("learned", "instances"), default=None,
                    help="override the model's inference.geometric_mode")
    ap.add_argument("--geometric-box", default=None,
                    help="override the model's inference.geometric_box (how a box alone picks its object)")
    ap.add_argument("--geometric-only", action="store_true", help="only the box and point figures")
    ap.add_argument("--source", action="append", default=[], help="only images of this source (repeatable)")
    args = ap.parse_args(argv)
    import torch

    from data_builders import load_pathseg
    from pathsegmentor import PathSegmentor

    torch.set_num_threads(2)
    model = PathSegmentor.from_pretrained(args.model).eval()
    if args.geometric_window is not None:
        model.config.inference.geometric_window = args.geometric_window
    if args.geometric_mode is not None:
        model.config.inference.geometric_mode = args.geometric_mode
    if args.geometric_box is not None:
        from pathsegmentor.inference.geometric_instances import check_geometric_box

        check_geometric_box(args.geometric_box)
        model.config.inference.geometric_box = args.geometric_box
    print(json.dumps({"model": model.name, "split": args.split,
                      "geometric_mode": getattr(model.config.inference, "geometric_mode", "learned"),
                      "geometric_box": getattr(model.config.inference, "geometric_box", "best_instance"),
                      **run(model, load_pathseg(args.data), args.split, objects=args.objects, limit=args.limit,
                             geometric_only=args.geometric_only, sources=args.source)},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
