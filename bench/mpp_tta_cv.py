"""Choose ``estimate_mpp``'s test-time scales and patch count by cross-validation on the TRAINING split.

The decision harness behind :data:`pathsegmentor.inference.mpp_estimate.TEST_SCALES` (the validation
bench, ``bench/mpp_auto.py``, is not read): the training images of MoNuSeg, GlaS and CoNSeP are split into
the fit's 5 folds (grouped by image); an MLP of the shipped setting is fitted on four folds' training
features (``bench/mpp_auto.py``'s views and patches) and estimates each image of the fifth at the bench's
three scales (1, 0.6, 1.6), as ``estimate_mpp`` does, under each variant:

* ``one scale, 16 patches``: the shipped estimator before this decision;
* ``one scale, 48 patches``: as many patches as the three-scale variant (is it only the patch count?);
* ``scales 1/r, 1, r``: the image also resampled by ``1/r`` and ``r``, 16 patches each, every patch's
  estimate corrected by its resampling factor, the median over all (and five scales in steps of ``r``).

Prints, per variant, the within-15 % fraction and the log-std of the errors over images x scales.

    python bench/mpp_tta_cv.py [--features runs/mpp-train-features.npz] [--per-set N]
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_spec = importlib.util.spec_from_file_location("mpp_auto_bench", ROOT / "bench" / "mpp_auto.py")
mb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mb)

VARIANTS = {  # name -> resampling factors (1.0: the image as it is); the patches of a factor are shared
    "one scale, 16 patches": (1.0,),
    "one scale, 48 patches": (1.0, "48"),
    "scales 1/1.25, 1, 1.25": (1 / 1.25, 1.0, 1.25),
    "scales 1/1.4, 1, 1.4": (1 / 1.4, 1.0, 1.4),
    "5 scales, steps of 1.15": (1 / 1.15 ** 2, 1 / 1.15, 1.0, 1.15, 1.15 ** 2),
    "5 scales, steps of 1.25": (1 / 1.25 ** 2, 1 / 1.25, 1.0, 1.25, 1.25 ** 2),
}
PATCHES = 16
SHIPPED = dict(hidden=64, weight_decay=1e-3, dropout=0.1)


def patch_logs(reg, rgb: np.ndarray, factor: float, count: int, seed: int) -> np.ndarray:
    """log mpp of ``count`` patches of ``rgb`` resampled by ``factor``, corrected back to ``rgb``'s pixels."""
    from pathsegmentor.inference.mpp_features import patch_features, sample_patches

    im = rgb if factor == 1.0 else mb.rescale(rgb, factor)
    crops = sample_patches([im], count, np.random.default_rng(seed))
    return reg(np.stack([patch_features(c) for c in crops]).astype(np.float64)) + math.log(factor)


def main(argv: list[str] | None = None) -> None:
    import torch

    from pathsegmentor.inference.mpp_estimate import MppRegressor
    from pathsegmentor.inference import mpp_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", default=None, help="training-feature cache (.npz) of bench/mpp_auto.py --fit")
    ap.add_argument("--per-set", type=int, default=None, help="at most this many images per dataset")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    X, y, g = mb.cached_training_features(args.features, args.per_set)
    fold = mb.folds(g)
    fold_of = dict(zip(g // mb.FIT_VIEWS, fold))  # training image id -> its fold
    meta = {"features": mpp_features.VERSION, "cv_log_std": "0"}
    regs = {f: MppRegressor(mb.train_mlp(X[fold != f], y[fold != f], **SHIPPED), meta) for f in range(5)}
    variants = list(VARIANTS)
    errors: dict[str, list[float]] = {v: [] for v in variants}
    for i, (name, p, mpp) in enumerate(mb.images("train", args.per_set)):
        reg, rgb = regs[fold_of[i]], mb.load(p)
        for s in mb.SCALES:
            im, truth = mb.rescale(rgb, s), math.log(mpp / s)
            base = patch_logs(reg, im, 1.0, 3 * PATCHES, seed=0)
            logs = {1.0: base[:PATCHES], "48": base[PATCHES:]}
            for v, factors in VARIANTS.items():
                for f in factors:
                    if f not in logs:
                        logs[f] = patch_logs(reg, im, f, PATCHES, seed=len(logs))
                errors[v].append(float(np.median(np.concatenate([logs[f] for f in factors]))) - truth)
    print("\ncross-validated on the training split (images x scales 1, 0.6, 1.6):")
    for v in variants:
        e = np.array(errors[v])
        print(f"{v:24s} within 15 %: {np.mean(np.abs(np.exp(e) - 1) <= 0.15):.3f}   log-std {np.std(e):.3f}   "
              f"({len(e)} estimates)")


if __name__ == "__main__":
    main()
