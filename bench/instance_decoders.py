"""The instance decoders' own parameters, swept on the TRAINING split (never validation).

    python bench/instance_decoders.py [--model pathsegmentor-tiny] [--data runs/pathseg-shared] \
        [--split train] [--source monuseg] [--limit 24]

The model runs once per image (``segment()`` with the shipped decoder); its probabilities and separation maps
are kept (the bench wraps ``pathsegmentor.inference.separation.decode_instances`` to see the maps it is given), and
every decoder setting is applied to them offline:

* mask threshold 0.4 / 0.5;
* ``distance``: the core threshold on the predicted border distance (0.3-0.6);
* ``watershed`` (mask only): the h of the distance transform's h-maxima;
* ``hv``: the per-pixel jump in the centre offsets that marks a border;
* ``border`` (models with the thick-border map): the border probability above which a pixel is not a marker.

Prints mean AJI and PQ per setting (the shipped one is marked). Nothing here is asserted.

``--min-object`` prints instead the ``distance`` decoder (the model's core) with objects under A µm² not counted
(``inference.instance_min_object_um2``), the mask unchanged: AJI, PQ, DQ and object counts per A; with ``--cores``
one such table per core (the core and the smallest object chosen together).

``--oracle-mask`` prints instead where the shipped decoder loses: the same predicted maps decoded from the model's
own mask and from the ground-truth mask (the ``distance`` decoder at the model's core for the object type), with
AJI, PQ, SQ (mean IoU of matched objects), DQ (object F1 at IoU 0.5) and the object counts. A large gap says the
mask, not the separation, is what costs the instances.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = {"monuseg": "nuclei", "glas": "gland"}  # the sources with instance ground truth
GRID = {"distance": ("core", (0.3, 0.35, 0.4, 0.45, 0.5, 0.6)), "watershed": ("h", (1.0, 1.5, 2.0, 3.0)),
        "hv": ("edge", (0.15, 0.25, 0.4)), "border": ("threshold", (0.3, 0.4, 0.5, 0.6, 0.7))}
MIN_OBJECT_UM2 = {"glas": (0, 250, 500, 750, 1000, 1500, 2000), "monuseg": (0, 2.5, 5, 10, 20)}  # µm², per source
SHIPPED = {"distance": 0.45, "watershed": 1.5, "hv": 0.25, "border": 0.5}  # the decoders' defaults (separation.py, instances.py)


def capture(model, corpus, split: str, source: str, limit: int) -> list[tuple]:
    """``(probs float32 [H, W], maps float32 [3 or 4, H, W], ground-truth instances int32 [H, W], µm/px)`` per
    image."""
    import pathsegmentor.inference.separation as seg

    label = LABELS[source]
    seen: dict = {}
    decode = seg.decode_instances

    def keep_maps(mask, maps, method="auto", **kw):
        seen["maps"] = maps
        return decode(mask, maps, method, **kw)

    table = corpus.images[split]
    rows = [i for i in range(len(table)) if table["source"][i] == source][:limit or None]
    out = []
    seg.decode_instances = keep_maps
    try:
        for i in rows:
            s = corpus.sample(split, i)
            inst = (s.get("instances") or {}).get(label)
            if inst is None:
                continue
            seen.clear()
            res = model.segment(s["image"], label, mpp=s["mpp"], vocabulary="open", instances="distance")
            maps = seen.get("maps")
            if maps is None or maps.shape[-2:] != res.probs.shape[-2:]:
                continue  # not decoded at the input's size (absent, or another working µm/px)
            out.append((res.probs[0], np.asarray(maps, np.float32), np.asarray(inst, np.int32), float(s["mpp"])))
    finally:
        seg.decode_instances = decode
    return out


def object_scores(gt: np.ndarray, lab: np.ndarray) -> tuple[float, ...]:
    """``(AJI, PQ, SQ, DQ, objects, true objects)`` of instances ``lab`` against ``gt`` (``int32 [H, W]``)."""
    from pathsegmentor.evaluation.metrics import aggregated_jaccard_index, panoptic_quality

    pq = panoptic_quality(gt, lab)
    return (aggregated_jaccard_index(gt, lab), pq["pq"], pq["sq"], pq["dq"], len(np.unique(lab)) - 1,
            len(np.unique(gt)) - 1)


def oracle_table(images, core: float, threshold: float) -> None:
    """Prints the ``distance`` decoder's figures from the model's mask and from the ground-truth mask."""
    from pathsegmentor.inference.separation import instances_from_distance

    print(f"| mask (decoder: distance, core {core}) | AJI | PQ | SQ | DQ | objects / true |")
    print("|---|---|---|---|---|---|")
    for name, truth in ((f"the model's (probability > {threshold})", False), ("ground truth", True)):
        m = np.mean([object_scores(gt, instances_from_distance(gt > 0 if truth else probs > threshold, maps[2],
                                                               core=core))
                     for probs, maps, gt, _ in images], axis=0)
        print(f"| {name} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {m[3]:.4f} | {m[4]:.0f} / {m[5]:.0f} |", flush=True)


def min_object_table(images, core: float, threshold: float, shipped: float, grid: tuple[float, ...]) -> None:
    """Prints the ``distance`` decoder's figures when objects under A µm² are not counted (the mask unchanged), for
    each A of ``grid``."""
    from pathsegmentor.inference.instances import drop_small
    from pathsegmentor.inference.separation import instances_from_distance

    print(f"| smallest object, µm² (decoder: distance, core {core}) | AJI | PQ | DQ (object F1) | objects / true |")
    print("|---|---|---|---|---|")
    decoded = [(instances_from_distance(probs > threshold, maps[2], core=core), gt, mpp)
               for probs, maps, gt, mpp in images]  # decoded once; each area only drops objects
    for area in grid:
        m = np.mean([object_scores(gt, drop_small(lab.copy(), round(area / (mpp * mpp)))) for lab, gt, mpp in decoded],
                    axis=0)
        mark = " (shipped)" if area == shipped else ""
        print(f"| {area:g}{mark} | {m[0]:.4f} | {m[1]:.4f} | {m[3]:.4f} | {m[4]:.1f} / {m[5]:.1f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--source", default="monuseg", choices=sorted(LABELS))
    ap.add_argument("--limit", type=int, default=24, help="images (0: all of the source in the split)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--oracle-mask", action="store_true",
                    help="compare the model's own mask with the ground-truth mask under the same maps and decoder")
    ap.add_argument("--min-object", action="store_true",
                    help="sweep the smallest object counted (inference.instance_min_object_um2) under the distance "
                         "decoder at the model's core")
    ap.add_argument("--cores", type=float, nargs="+", default=None,
                    help="with --min-object: one table per distance core instead of the model's (a joint choice of "
                         "the core and the smallest object, e.g. by object F1 for glands)")
    args = ap.parse_args(argv)
    import torch

    from data_builders import load_pathseg
    from pathsegmentor import PathSegmentor
    from pathsegmentor.evaluation.metrics import aggregated_jaccard_index, panoptic_quality
    from pathsegmentor.inference.instances import separate_instances
    from pathsegmentor.inference.separation import instances_from_border, instances_from_distance, instances_from_hv

    torch.set_num_threads(args.threads)
    model = PathSegmentor.from_pretrained(args.model).eval()
    images = capture(model, load_pathseg(args.data), args.split, args.source, args.limit)
    decoders = {"distance": lambda m, maps, v: instances_from_distance(m, maps[2], core=v),
                "watershed": lambda m, maps, v: separate_instances(m, h=v),
                "hv": lambda m, maps, v: instances_from_hv(m, maps[:2], edge=v),
                "border": lambda m, maps, v: instances_from_border(m, maps[3], threshold=v)}
    print(f"{model.name}, {args.source} {args.split}, {len(images)} images")
    if args.oracle_mask:
        from pathsegmentor.inference.separation import distance_core

        core = distance_core(model.config.inference, LABELS[args.source])  # the shipped core of the label's type
        oracle_table(images, core, model.config.inference.mask_threshold)
        return 0
    if args.min_object:
        from pathsegmentor.inference.separation import distance_core, min_object_um2

        inf, label = model.config.inference, LABELS[args.source]
        for core in args.cores or [distance_core(inf, label)]:
            min_object_table(images, core, inf.mask_threshold, min_object_um2(inf, label), MIN_OBJECT_UM2[args.source])
        return 0
    print("| decoder | parameter | mask threshold | AJI | PQ |")
    print("|---|---|---|---|---|")
    for thr in (0.4, 0.5):
        for name, (param, values) in GRID.items():
            if name == "border" and images and len(images[0][1]) < 4:
                continue  # a model without the thick-border map
            for v in values:
                aji, pq = [], []
                for probs, maps, gt, _ in images:
                    lab = decoders[name](probs > thr, maps, v)
                    aji.append(aggregated_jaccard_index(gt, lab))
                    pq.append(panoptic_quality(gt, lab)["pq"])
                mark = " (shipped)" if v == SHIPPED[name] and thr == model.config.inference.mask_threshold else ""
                print(f"| {name} | {param} {v}{mark} | {thr} | {np.mean(aji):.4f} | {np.mean(pq):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
