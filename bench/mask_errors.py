"""Where a model's wrong nucleus pixels lie, on the TRAINING split by default (never used to tune on validation).

    python bench/mask_errors.py [--model pathsegmentor-tiny ...] [--data runs/pathseg-shared] [--split train] \
        [--source monuseg] [--limit 12] [--band 2]

Each model runs once per image (``segment()`` with its shipped settings, the images of
``bench/instance_decoders.py``'s capture). Its mask (probability > 0.5) is compared with the ground-truth nuclei and
every wrong pixel is put in one of three places:

* **border band**: within ``--band`` px of a true nucleus border (inside or outside), where a sharper or
  finer-grained mask would help;
* **missed objects** (false negatives): inside a true nucleus less than 30 % covered by the mask;
* **spurious objects** (false positives): inside a predicted component that overlaps true nuclei by less than 10 %.

Prints per model: pixel Dice, the share of false-negative and false-positive pixels in each place, the missed
nuclei, and the Dice the mask would have if every border-band error were forgiven (an upper bound on what boundary
precision alone can add). Nothing here is asserted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def error_places(probs: np.ndarray, gt: np.ndarray, band: int) -> dict[str, int]:
    """Pixel counts for one image: ``tp, fp, fn``, ``fp_band, fn_band`` (within ``band`` px of a true border),
    ``fn_missed`` (in nuclei < 30 % covered), ``fp_spurious`` (in components < 10 % on nuclei), ``missed, nuclei``."""
    from scipy import ndimage as ndi

    pred, true = probs > 0.5, gt > 0
    near = ndi.binary_dilation(true, iterations=band) & ~ndi.binary_erosion(true, iterations=band)
    fp, fn = pred & ~true, true & ~pred
    ids = np.unique(gt)
    ids = ids[ids > 0]
    cover = np.asarray(ndi.mean(pred, gt, ids)) if ids.size else np.zeros(0)
    sizes = np.asarray(ndi.sum(np.ones_like(gt), gt, ids)) if ids.size else np.zeros(0)
    comp, n = ndi.label(pred)
    spurious = 0
    if n:
        idx = np.arange(1, n + 1)
        on_true = np.asarray(ndi.mean(true, comp, idx))
        spurious = int(np.asarray(ndi.sum(np.ones_like(comp), comp, idx))[on_true < 0.1].sum())
    return {"tp": int((pred & true).sum()), "fp": int(fp.sum()), "fn": int(fn.sum()),
            "fp_band": int((fp & near).sum()), "fn_band": int((fn & near).sum()),
            "fn_missed": int(sizes[cover < 0.3].sum()), "fp_spurious": spurious,
            "missed": int((cover < 0.3).sum()), "nuclei": int(ids.size)}


def summary(counts: list[dict[str, int]]) -> dict[str, float]:
    t = {k: sum(c[k] for c in counts) for k in counts[0]}
    dice = 2 * t["tp"] / max(2 * t["tp"] + t["fp"] + t["fn"], 1)
    forgiven = 2 * t["tp"] / max(2 * t["tp"] + t["fp"] - t["fp_band"] + t["fn"] - t["fn_band"], 1)
    return {"dice": dice, "fn_band": t["fn_band"] / max(t["fn"], 1), "fn_missed": t["fn_missed"] / max(t["fn"], 1),
            "fp_band": t["fp_band"] / max(t["fp"], 1), "fp_spurious": t["fp_spurious"] / max(t["fp"], 1),
            "missed": t["missed"], "nuclei": t["nuclei"], "dice_band_forgiven": forgiven}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=["pathsegmentor-tiny"])
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--split", default="train")
    ap.add_argument("--source", default="monuseg")
    ap.add_argument("--limit", type=int, default=12, help="images (0: all of the source in the split)")
    ap.add_argument("--band", type=int, default=2, help="px either side of a true border")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    from data_builders import load_pathseg
    from instance_decoders import capture
    from pathsegmentor import PathSegmentor

    torch.set_num_threads(args.threads)
    corpus = load_pathseg(args.data)
    print(f"{args.source} {args.split}, first {args.limit or 'all'} images, border band ±{args.band} px")
    print("| model | Dice | FN in band | FN in missed nuclei | FP in band | FP in spurious objects | missed nuclei "
          "| Dice, band forgiven |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.model:
        model = PathSegmentor.from_pretrained(name).eval()
        images = capture(model, corpus, args.split, args.source, args.limit)
        if not images:
            print(f"| {name} | no image of {args.source} with nuclei in {args.split} | | | | | | |")
            continue
        s = summary([error_places(probs, gt, args.band) for probs, _, gt, _ in images])
        print(f"| {name} | {s['dice']:.4f} | {s['fn_band']:.0%} | {s['fn_missed']:.0%} | {s['fp_band']:.0%} | "
              f"{s['fp_spurious']:.0%} | {s['missed']} of {s['nuclei']} | {s['dice_band_forgiven']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
