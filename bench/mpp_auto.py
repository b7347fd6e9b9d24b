"""``--mpp auto`` accuracy: the estimated pixel size against the known one.

    python bench/mpp_auto.py            # held-out (validation-split) images + the CMU slide, 3 scales each
    python bench/mpp_auto.py --fit      # refit the regressor of pathsegmentor.inference.mpp_estimate on the
                                        # TRAINING-split images only (writes mpp_regressor.safetensors)

Images: MoNuSeg (0.25 µm/px), GlaS (0.5), CoNSeP (0.25) from ../shared/data, split as the corpus builder
splits them (``data_builders.splits.assign_groups``, 20 % validation, seed 0; MoNuSeg grouped by patient,
the others by image), and CMU-1-Small-Region.svs (0.499). Each is also resampled by 0.6 and 1.6 (the true
pixel size becomes mpp/0.6 and mpp/1.6). Prints a table (true, estimate, relative error, within 15 %?)
and, last, the fraction within 15 %.

``--fit``: every training image read :data:`FIT_NATIVE` times as it is (scale 1: the sharpness of a real scan,
which resampling changes) and resampled to :data:`FIT_SCALES` random scales (log-uniform 0.35-2.5x), each
view read as :data:`FIT_PATCHES` random 256 px patches; an MLP (log mpp from the patch features) is chosen
among :data:`GRID` by 5-fold cross-validation grouped by image (the validation split is not used), refit
on all training patches, and saved with its cross-validated error (log-std of the per-image median). Then the
chosen setting as an ensemble of :data:`ENSEMBLE` MLPs (different seeds, predictions averaged) is
cross-validated the same way; the file holds the ensemble when its cross-validated within-15 % is higher.
``--features F.npz`` caches the training features (reused when the file exists; computing them is most of
the fit's time).
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
    """``rgb`` resampled by ``s`` (the package's resize: box filter when shrinking, bilinear when enlarging)."""
    from pathsegmentor.inference.image_io import scale_rgb

    return scale_rgb(rgb, s)


FIT_SCALES = 10
FIT_NATIVE = 2  # views at scale 1 per image: without them the native images (no resampling) read ~15 % coarse
FIT_VIEWS = FIT_NATIVE + FIT_SCALES
FIT_PATCHES = 4
GRID = [dict(hidden=64, weight_decay=1e-3, dropout=0.1), dict(hidden=32, weight_decay=1e-3, dropout=0.0),
        dict(hidden=128, weight_decay=1e-2, dropout=0.2)]
EPOCHS = 3000
ENSEMBLE = 5  # MLPs in the ensemble the fit compares with one


def training_features(per_set: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patch features ``[N, F]``, log mpp ``[N]``, and (image, scale) group ids ``[N]`` of the training split."""
    from pathsegmentor.inference.mpp_features import patch_features, sample_patches

    rng = np.random.default_rng(0)
    X, y, g = [], [], []
    for i, (name, p, mpp) in enumerate(images("train", per_set)):
        rgb = load(p)
        scales = [1.0] * FIT_NATIVE + list(np.exp(rng.uniform(math.log(0.35), math.log(2.5), FIT_SCALES)))
        for k, s in enumerate(scales):
            for patch in sample_patches([rgb if s == 1.0 else rescale(rgb, float(s))], FIT_PATCHES, rng):
                X.append(patch_features(patch))
                y.append(math.log(mpp / s))
                g.append(i * FIT_VIEWS + k)
        print(f"{name:8s} {p.name}", flush=True)
    return np.array(X, np.float64), np.array(y), np.array(g)


def cached_training_features(path: str | None, per_set: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`training_features`, read from the ``.npz`` at ``path`` when it exists, else computed (and
    written there when ``path`` is given)."""
    if path and Path(path).is_file():
        with np.load(path) as cached:
            X, y, g = cached["X"], cached["y"], cached["g"]
        print(f"training features from {path}: {X.shape}")
        return X, y, g
    X, y, g = training_features(per_set)
    if path:
        np.savez_compressed(path, X=X, y=y, g=g)
    return X, y, g


def folds(g: np.ndarray) -> np.ndarray:
    """The cross-validation fold (0-4) of every training patch: grouped by image (its views share one),
    images permuted with seed 0."""
    image = g // FIT_VIEWS
    ids = np.unique(image)
    fold_of = dict(zip(ids, np.random.default_rng(0).permutation(ids) % 5))
    return np.array([fold_of[i] for i in image])


def train_mlp(X: np.ndarray, y: np.ndarray, hidden: int, weight_decay: float, dropout: float, seed: int = 0):
    """Fit the MLP (standardised inputs, NaN -> training median); returns the safetensors dict."""
    import torch

    fill = np.nanmedian(X, 0)
    X = np.where(np.isnan(X), fill, X)
    mean, std = X.mean(0), X.std(0) + 1e-6
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(X.shape[1], hidden), torch.nn.GELU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=weight_decay)
    xt = torch.tensor((X - mean) / std, dtype=torch.float32)
    yt = torch.tensor(y - y.mean(), dtype=torch.float32)
    for _ in range(EPOCHS):
        loss = torch.nn.functional.smooth_l1_loss(net(xt)[:, 0], yt, beta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = {"fill": fill, "mean": mean, "std": std, "target_mean": np.array([y.mean()])}
    for j, layer in enumerate(m for m in net if isinstance(m, torch.nn.Linear)):
        t[f"layer{j}.weight"] = layer.weight.detach().double().numpy()
        t[f"layer{j}.bias"] = layer.bias.detach().double().numpy()
    return {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}


def group_median_errors(pred: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Per (image, scale) group: median patch estimate minus the truth, in log mpp."""
    return np.array([np.median(pred[g == k]) - y[g == k][0] for k in np.unique(g)])


def ensemble(X: np.ndarray, y: np.ndarray, params: dict, members: int) -> dict[str, np.ndarray]:
    """``members`` MLPs of one setting, seeds 0.., in one tensor dict (``m{k}.layer...``; shared standardisation)."""
    out: dict[str, np.ndarray] = {}
    for k in range(members):
        t = train_mlp(X, y, **params, seed=k)
        out.update({(f"m{k}.{n}" if n.startswith("layer") else n): v for n, v in t.items()})
    return out


def fit(per_set: int | None, features: str | None = None) -> None:
    import torch
    from safetensors.numpy import save_file

    from pathsegmentor.inference import mpp_features
    from pathsegmentor.inference.mpp_estimate import REGRESSOR_FILE, MppRegressor

    torch.set_num_threads(1)
    X, y, g = cached_training_features(features, per_set)
    image = g // FIT_VIEWS
    fold = folds(g)
    meta = {"features": mpp_features.VERSION}

    def cross_validate(make) -> tuple[float, float]:
        errs = []
        for f in range(5):
            reg = MppRegressor(make(X[fold != f], y[fold != f]), {**meta, "cv_log_std": "0"})
            errs.append(group_median_errors(reg(X[fold == f]), y[fold == f], g[fold == f]))
        e = np.concatenate(errs)
        return float(np.mean(np.abs(np.exp(e) - 1) <= 0.15)), float(np.std(e))

    best = None
    for params in GRID:
        within, log_std = cross_validate(lambda a, b, params=params: train_mlp(a, b, **params))
        print(f"cv {params}: within 15 % {within:.3f}, log-std {log_std:.3f}", flush=True)
        if best is None or within > best[0]:
            best = (within, params, log_std)
    within, params, log_std = best
    e_within, e_std = cross_validate(lambda a, b: ensemble(a, b, params, ENSEMBLE))
    print(f"cv {params} x {ENSEMBLE} seeds: within 15 % {e_within:.3f}, log-std {e_std:.3f}", flush=True)
    members = ENSEMBLE if e_within > within else 1
    if members > 1:
        within, log_std = e_within, e_std
    tensors = ensemble(X, y, params, members) if members > 1 else train_mlp(X, y, **params)
    meta.update(cv_log_std=f"{log_std:.4f}", cv_within_15=f"{within:.3f}", params=str(params), members=str(members),
                fitted_on=f"training split of MoNuSeg/GlaS/CoNSeP, {len(np.unique(image))} images x ({FIT_NATIVE} native + "
                          f"{FIT_SCALES} resampled views) x {FIT_PATCHES} patches (bench/mpp_auto.py --fit)")
    save_file(tensors, str(REGRESSOR_FILE), metadata=meta)
    print(f"chosen {params}, {members} member(s) (cv within 15 %: {within:.3f}, log-std {log_std:.3f}); "
          f"wrote {REGRESSOR_FILE}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="fit the constants on the training split")
    ap.add_argument("--per-set", type=int, default=None, help="at most this many images per dataset")
    ap.add_argument("--features", default=None, help="with --fit: cache the training features in this .npz")
    args = ap.parse_args(argv)
    if args.fit:
        return fit(args.per_set, args.features)
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
