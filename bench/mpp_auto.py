"""``--mpp auto`` accuracy: the estimated pixel size against the known one.

    python bench/mpp_auto.py            # held-out (validation-split) images + the CMU slide, 3 scales each
    python bench/mpp_auto.py --fit      # refit the constants of pathsegmentor.inference.mpp_estimate on
                                        # the TRAINING-split images only (prints them)

Images: MoNuSeg (0.25 µm/px), GlaS (0.5), CoNSeP (0.25) from ../shared/data, split as the corpus builder
splits them (``data_builders.splits.assign_groups``, 20 % validation, seed 0; MoNuSeg grouped by patient,
the others by image), and CMU-1-Small-Region.svs (0.499). Each is also resampled by 0.6 and 1.6 (the true
pixel size becomes mpp/0.6 and mpp/1.6). Prints a table (true, estimate, relative error, within 15 %?)
and, last, the fraction within 15 %.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
SCALES = (1.0, 0.6, 1.6)


def images(split: str, per_set: int | None) -> list[tuple[str, Path, float]]:
    from data_builders.splits import assign_groups

    sets = [("monuseg", sorted((DATA / "monuseg/MoNuSegTrainingData/Tissue_Images").glob("*.tif")), 0.25,
             lambda p: p.stem[:12]),
            ("glas", sorted((DATA / "glas/images").glob("*.png")), 0.5, lambda p: p.stem),
            ("consep", sorted((DATA / "consep/images").glob("*.png")), 0.25, lambda p: p.stem)]
    out = []
    for name, files, mpp, group in sets:
        if not files:
            sys.exit(f"no images under {DATA / name}; the bench needs ../shared/data")
        split_of = assign_groups([group(p) for p in files], val_fraction=0.2, seed=0)
        chosen = [p for p in files if split_of[group(p)] == split]
        out += [(name, p, mpp) for p in chosen[:per_set]]
    return out


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def rescale(rgb: np.ndarray, s: float) -> np.ndarray:
    from pathsegmentor.inference.mpp_estimate import _resize

    return rgb if s == 1.0 else _resize(rgb, s)


def fit(per_set: int | None) -> None:
    from pathsegmentor.inference.mpp_estimate import nucleus_diameters

    logs, slopes = [], []
    for name, p, mpp in images("train", per_set):
        rgb = load(p)
        d1 = np.median(nucleus_diameters(rgb, mpp))
        d2 = np.median(nucleus_diameters(rgb, mpp * 1.25))
        logs.append(math.log(d1))
        slopes.append(math.log(d2 / d1) / math.log(1.25))
        print(f"{name:8s} {p.name:40s} d={d1:.2f} µm slope={slopes[-1]:.2f}", flush=True)
    print(f"NUCLEUS_DIAMETER_UM = {math.exp(np.mean(logs)):.3g}\nSLOPE = {np.median(slopes):.2g}\n"
          f"CALIBRATION_LOG_STD = {np.std(logs):.2g}\n(n={len(logs)} training images)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="fit the constants on the training split")
    ap.add_argument("--per-set", type=int, default=None, help="at most this many images per dataset")
    args = ap.parse_args(argv)
    if args.fit:
        return fit(args.per_set)
    from pathsegmentor.inference.mpp_estimate import MppEstimateError, estimate_mpp
    from pathsegmentor.slide.mpp_auto import tissue_regions
    from pathsegmentor.slide.reader import open_slide

    cases = [(n, p.name, load(p), mpp) for n, p, mpp in images("validation", args.per_set)]
    with open_slide(DATA / "slides" / "CMU-1-Small-Region.svs") as r:
        cmu = tissue_regions(r)
    rows, t0 = [], time.perf_counter()
    print(f"{'set':8s} {'image':24s} {'scale':>5s} {'true':>6s} {'estimate':>9s} {'±%':>4s} {'rel.err':>8s} within15")
    for name, file, rgb, mpp in cases + [("cmu-svs", "CMU-1-Small-Region.svs", cmu, 0.499)]:
        for s in SCALES:
            im = [rescale(x, s) for x in rgb] if isinstance(rgb, list) else rescale(rgb, s)
            true = mpp / s
            try:
                e = estimate_mpp(im)
                est, unc, err = e.mpp, f"{100 * e.relative_uncertainty:4.0f}", e.mpp / true - 1.0
            except MppEstimateError:
                est, unc, err = float("nan"), "  --", float("nan")
            ok = bool(abs(err) <= 0.15)  # a refusal counts as a miss
            rows.append(ok)
            print(f"{name:8s} {file[:24]:24s} {s:5.2f} {true:6.3f} {est:9.3f} {unc} {100 * err:+7.1f}% {'yes' if ok else 'no'}",
                  flush=True)
    print(f"images {len(rows)}, within 15 %: {sum(rows)}/{len(rows)} = {sum(rows) / len(rows):.2f} "
          f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
