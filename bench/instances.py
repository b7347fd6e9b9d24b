"""Nuclei and glands as objects: the model against a classical threshold, on the same images in one run.

    python bench/instances.py [--model pathsegmentor-tiny] [--data runs/pathseg-shared] [--split validation]

For every image of the split with the category (MoNuSeg and CoNSeP "nuclei", GlaS "gland"):

* the model through ``segment()`` at its working resolution, once per instance decoder
  (``border`` the thick-border map of models with four separation maps, ``hv`` centre offsets, ``distance``
  border distance, ``watershed`` of the mask alone — the decoder of v1) and once with flip test-time
  augmentation and the shipped decoder; with ``--coarse`` nuclei also run at twice the working µm/px (0.5
  instead of 0.25) to show what the finer resolution buys;
* the classical baseline: Otsu threshold on the haematoxylin channel of skimage's colour
  deconvolution, an opening (disk of 0.25 µm, one pixel at 40x), objects under 2 µm² removed,
  instances by the same distance-transform watershed (nuclei only; for glands the baseline is not
  meaningful and omitted). A heavier opening (1 µm) and a 10 µm² floor scored about half the Dice on
  these images: the lighter one is reported (looked at on validation; it only strengthens the baseline).

Prints per source and method: pixel Dice (pooled), AJI, PQ / DQ / SQ (DQ is the object F1 at IoU 0.5)
where the source has instance ground truth, and the seconds per 1000x1000 tile at 0.25 µm/px
("nuclei" with instances, end to end, best of 2), with ``--reference MODEL`` also that model's on the same tile in
the same process and the ratio. Nothing here is asserted; figures depend on the machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from objects import print_table, score_rows  # noqa: E402

TASKS = {"monuseg": "nuclei", "consep": "nuclei", "glas": "gland"}


def classical_nuclei(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """The five-line baseline: haematoxylin (skimage rgb2hed) > Otsu, opening, small objects removed."""
    from skimage.color import rgb2hed
    from skimage.filters import threshold_otsu
    from skimage.morphology import binary_opening, disk, remove_small_objects

    h = rgb2hed(rgb)[..., 0]
    mask = h > threshold_otsu(h)
    mask = binary_opening(mask, disk(max(1, round(0.25 / mpp))))
    return remove_small_objects(mask, max_size=max(2, round(2.0 / (mpp * mpp))))


def tile_seconds(model, tile: np.ndarray, repeats: int = 2) -> dict[str, float]:
    """Best of ``repeats`` seconds for "nuclei" on a 1000² tile at 0.25 µm/px, mask only and with instances (every
    call encodes its windows: a predictor without the encoding cache)."""
    from pathsegmentor import Predictor

    model = Predictor(model, cache_bytes=0)
    model.segment(tile[:256, :256], "nuclei", mpp=0.25, vocabulary="open")  # warm-up
    out = {}
    for name, kw in (("mask_only", dict(instances="none")), ("with_instances", dict(instances="auto"))):
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            model.segment(tile, "nuclei", mpp=0.25, vocabulary="open", **kw)
            best = min(best, time.perf_counter() - t)
        out[f"seconds_per_1000px_tile_{name}"] = round(best, 3)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="validation")
    ap.add_argument("--limit", type=int, default=0, help="images per source (0: all)")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--coarse", action="store_true", help="also run nuclei at twice the working µm/px")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-only", action="store_true", help="only the classical baseline rows (no model runs)")
    ap.add_argument("--reference", default="", help="also time this model on the same tile in the same process "
                                                    "(e.g. the previous release), for a speed ratio")
    args = ap.parse_args(argv)

    import torch

    from data_builders import load_pathseg
    from pathsegmentor import PathSegmentor
    from pathsegmentor.evaluation.metrics import confusion
    from pathsegmentor.inference.instances import separate_instances

    torch.set_num_threads(args.threads)
    model = PathSegmentor.from_pretrained(args.model).eval()
    corpus = load_pathseg(args.data)
    table = corpus.images[args.split]
    n_maps = model.config.mask_decoder.separation_channels
    methods = (["border"] if n_maps > 3 else []) + (["hv", "distance", "watershed"] if model.has_separation
                                                    else ["watershed"])
    shipped = model.config.inference.instances if model.config.inference.instances in methods else methods[0]
    counts: dict[tuple[str, str], list] = defaultdict(list)
    per_source_n: dict[str, int] = defaultdict(int)
    for i in range(len(table)):
        src = table["source"][i]
        label = TASKS.get(src)
        if label is None or (args.limit and per_source_n[src] >= args.limit):
            continue
        s = corpus.sample(args.split, i)
        if label not in s["targets"]:
            continue
        per_source_n[src] += 1
        gt = np.asarray(s["targets"][label], bool)
        gt_inst = (s.get("instances") or {}).get(label)
        runs = {} if args.baseline_only else {m: dict(instances=m) for m in methods}
        if not args.no_tta and not args.baseline_only:
            runs[f"{shipped}+tta"] = dict(instances=shipped, tta=True)
        if label == "nuclei" and args.coarse and not args.baseline_only:
            runs[f"{shipped}@0.5"] = dict(instances=shipped, mpp_scale=2.0)
        for name, kw in runs.items():
            scale = kw.pop("mpp_scale", 1.0)
            res = model.segment(s["image"], [label], mpp=s["mpp"] / scale, vocabulary="open", **kw)
            pred, inst = res.masks[0], res.instances[0] if res.instances is not None else separate_instances(res.masks[0])
            counts[(src, name)].append((confusion(pred, gt), gt_inst, inst))
        if label == "nuclei":
            base = classical_nuclei(s["image"], s["mpp"])
            counts[(src, "classical")].append((confusion(base, gt), gt_inst, separate_instances(base)))

    rows = score_rows(counts)

    tile = None
    for i in range(len(table)):  # a real 40x tile, cut/padded to 1000x1000
        if table["source"][i] == "monuseg":
            img = corpus.sample(args.split, i)["image"]
            tile = np.zeros((1000, 1000, 3), np.uint8) + 255
            tile[:min(1000, img.shape[0]), :min(1000, img.shape[1])] = img[:1000, :1000]
            break
    timing = {}
    if tile is not None and not args.baseline_only:
        timing = tile_seconds(model, tile)
        if args.reference:
            ref = tile_seconds(PathSegmentor.from_pretrained(args.reference).eval(), tile)
            timing.update({f"reference_{k}": v for k, v in ref.items()})
            timing["ratio_with_instances"] = round(timing["seconds_per_1000px_tile_with_instances"]
                                                   / ref["seconds_per_1000px_tile_with_instances"], 3)

    print_table(rows)
    print(json.dumps({"model": model.name, "split": args.split, "rows": rows, **timing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
