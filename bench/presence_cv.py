"""Presence on new cases, by grouped cross-validation over cases (issue 29, item 6).

    python bench/presence_cv.py --model pathsegmentor-tiny --data runs/pathseg-shared --folds 5 --out runs/presence-cv

Does the presence head say "no tumour" on a Normal biopsy of a patient it never saw? One split (2 Normal validation
patients, 12 biopsies) is too few to tell, so every case of the corpus (train and validation, grouped by source and
``patient_id``) is put in ``--folds`` folds, and for each fold:

1. the presence head is refit from the model's head (``--refit-from``: another model's, e.g. the network before its
   presence refit, whose head never saw a training case through that refit) on the other folds' features (``training.presence_refit.refit``:
   epoch count chosen on a grouped hold-out inside them, cell-balanced BCE, L2 pull to the start weights);
2. its threshold is calibrated on the other folds (MCC over all their pairs, as ``evaluation.presence`` does; with
   ``--selection cv``, the refit's own out-of-fold calibration inside the other folds, as the shipped recipe does);
3. the held-out fold is scored: "tumor" on each **Normal** EBHI-Seg biopsy is absent when its presence is under the
   threshold (the mask is empty then: ``segment()`` gates on presence), per view (the corpus' pixel size, and the
   pixel size unknown), "tumor" on adenocarcinoma biopsies found, and the MCC over every certain pair.

``--auto-view`` also reads every EBHI-Seg biopsy with the pixel size estimated (``segment(mpp="auto")``, the
documented path for a user without it) and scores those rows per fold with the fold's head and threshold; they are
never in a refit's training rows (the shipped recipe does not train on them). An image without an estimate (too few
nuclei: ``segment()`` then asks for the pixel size) has no such rows; the summary counts them
(``tumor_rows_without_estimate``).

``--train-features`` reuses the training split's collection of ``training.presence_refit --features`` (the same
prompts and views; the presence head's inputs do not depend on the head) instead of collecting it again.

The features (the presence head's inputs, as ``segment(..., vocabulary="open")`` produces them, with the prompts of
``evaluation.presence.asked_prompts`` and the train list of out-of-pathology phrases) are collected once per split
and cached in ``--out``. For reference the shipped head at its shipped threshold is scored on the same rows (its
train-split cases were seen in training: only its validation-case figures are held out). The features themselves
come from the shipped network, whose transformer trained on the train split's cases: the cross-validation isolates
the presence head (the part that decides "absent"), not the whole model. Nothing is asserted; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fold_of_groups(groups: list[str], folds: int, seed: int) -> dict[str, int]:
    """Each group's fold: the groups are shuffled and dealt round-robin (every fold gets whole groups)."""
    uniq = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(uniq))
    return {uniq[j]: k % folds for k, j in enumerate(order)}


def concat_splits(parts: list) -> tuple:
    """The rows of each ``(split, PresenceFeatures)`` part in order, and ``str [N]``: each row's split."""
    from pathsegmentor.training.presence_features import concat_features

    return concat_features(parts[0][1], parts[1][1]), np.array([s for s, f in parts for _ in range(len(f.y))])


def group_keys(feats) -> list[str]:
    return [f"{s}|{g}" for s, g in zip(feats.source, feats.group)]


def score(presence: np.ndarray, thr: float, feats, rows: np.ndarray) -> dict:
    """Held-out figures of ``rows`` at threshold ``thr``."""
    from pathsegmentor.evaluation.presence import confusion_at, mcc, Pair

    src, kind = np.asarray(feats.source), np.asarray(feats.kind)
    prompt, view = np.asarray(feats.prompt), np.asarray(feats.view)
    out: dict = {}
    tumor = rows & (src == "ebhi_seg") & (prompt == "tumor")
    for v in sorted(set(view[tumor].tolist()), key=("corpus", "none", "auto").index):
        neg = tumor & (view == v) & ~feats.y
        pos = tumor & (view == v) & feats.y
        out[f"normal_tumor_absent_{v}"] = [int((presence[neg] < thr).sum()), int(neg.sum())]
        out[f"adenocarcinoma_tumor_found_{v}"] = [int((presence[pos] >= thr).sum()), int(pos.sum())]
    pairs = [Pair("", s, "", k, bool(t), float(p), False) for s, k, t, p in
             zip(src[rows], kind[rows], feats.y[rows], presence[rows])]
    if pairs:
        out["mcc"] = round(mcc(**confusion_at(pairs, thr)), 4)
    return out


def presence_of(head, x: np.ndarray) -> np.ndarray:
    """``float32 [N]``: a presence head's probabilities on its inputs ``x`` (``float32 [N, D]``)."""
    import torch

    with torch.no_grad():
        return torch.sigmoid(head(torch.from_numpy(x)).squeeze(-1)).numpy()


def add(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, list):
            total[k] = [a + b for a, b in zip(total.get(k, [0, 0]), v)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="pathsegmentor-tiny")
    ap.add_argument("--data", default="runs/pathseg-shared")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--refit-from", default=None,
                    help="the model whose presence head each fold is refit from (default: --model's own). A shipped head "
                         "was itself refit on the training cases; pass the network before that refit (e.g. "
                         "runs/tiny-v8/model) so no fold starts from a head that saw its held-out cases")
    ap.add_argument("--selection", choices=("holdout", "cv"), default="holdout",
                    help="the refit's selection (training.presence_refit --selection): with cv each fold's threshold is "
                         "its out-of-fold calibration inside the other folds, as the shipped recipe's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sources", nargs="*", default=[],
                    help="only these sources' images (e.g. ebhi_seg: the diagnosis negatives); default: all")
    ap.add_argument("--auto-view", nargs="*", default=None, metavar="SOURCE",
                    help="also score each fold's head on these sources' images (none named: ebhi_seg) read with the "
                         "pixel size estimated (mpp='auto'; scored only, never trained on)")
    ap.add_argument("--out", default="runs/presence-cv")
    ap.add_argument("--train-features", default=None,
                    help="the training split's features from `presence_refit --features` of the same network (the "
                         "same collection), reused instead of collected again (only --sources rows kept)")
    args = ap.parse_args(argv)
    if args.train_features and not Path(args.train_features).is_file():
        print(f"error: --train-features '{args.train_features}' not found; pass the .npz that "
              "`python -m pathsegmentor.training.presence_refit MODEL --features PATH` wrote, or leave the flag out "
              "to collect the features here", file=sys.stderr)
        return 2
    if args.refit_from and not (Path(args.refit_from) / "config.json").is_file():
        print(f"error: --refit-from '{args.refit_from}' is not a model directory (config.json + model.safetensors); "
              "pass the network before its presence refit, e.g. runs/tiny-v8/model, or leave the flag out",
              file=sys.stderr)
        return 2

    import torch

    from data_builders import load_pathseg
    from pathsegmentor import from_pretrained
    from pathsegmentor.evaluation.presence import Pair, calibrate
    from pathsegmentor.training.presence_features import (collect_features, load_features,
                                                          save_features, select_features)
    from pathsegmentor.training.presence_refit import CVConfig, RefitConfig, refit
    from pathsegmentor.training.prompt_sampling import negative_phrases

    auto_sources = args.auto_view or ["ebhi_seg"]
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    model = from_pretrained(args.model).eval()
    corpus = None
    parts = []
    if args.train_features and not (out / "features-train.npz").is_file():
        reused = load_features(Path(args.train_features))  # the same collection: the head's inputs, not its outputs
        if args.sources:
            reused = select_features(reused, np.isin(reused.source, args.sources))
        reused.presence = presence_of(model.mask_decoder.presence_head, reused.x).tolist()  # this model's head
        save_features(out / "features-train.npz", reused)
    for split in ("train", "validation"):
        path = out / f"features-{split}.npz"
        if not path.is_file():
            corpus = corpus or load_pathseg(args.data)
            with torch.no_grad():
                save_features(path, collect_features(model, corpus, split=split, phrases=negative_phrases()["train"],
                                                     views_none=["ebhi_seg"], sources=args.sources))
        parts.append((split, load_features(path)))
        path = out / f"features-{split}-auto.npz"
        if args.auto_view is not None and not path.is_file():
            corpus = corpus or load_pathseg(args.data)
            with torch.no_grad():
                save_features(path, collect_features(model, corpus, split=split, phrases=negative_phrases()["train"],
                                                     sources=auto_sources, views_auto=auto_sources, corpus_view=False))
    feats, split_of = concat_splits(parts)
    auto, auto_split = concat_splits([(s, load_features(out / f"features-{s}-auto.npz")) for s, _ in parts]) \
        if args.auto_view is not None else (None, None)
    auto = auto if auto is not None and len(auto.y) else None  # no rows: no image of those sources got an estimate
    groups = group_keys(feats)
    fold_map = fold_of_groups(groups, args.folds, args.seed)
    fold = np.array([fold_map[g] for g in groups])
    # an estimated-pixel-size row belongs to its case's fold (-1: a case without rows in the refit's features)
    auto_fold = np.array([fold_map.get(g, -1) for g in group_keys(auto)]) if auto is not None else None
    # the head each fold is refit from: the model's own, or that of the network before its refit (--refit-from)
    head0 = from_pretrained(args.refit_from).eval().mask_decoder.presence_head if args.refit_from else \
        model.mask_decoder.presence_head
    shipped_thr = float(model.config.inference.presence_threshold)
    shipped = presence_of(model.mask_decoder.presence_head, feats.x)  # this model's head (cached features may come from another head)
    shipped_auto = presence_of(model.mask_decoder.presence_head, auto.x) if auto is not None else None

    refit_total: dict = {}
    shipped_total: dict = {}
    per_fold = []
    for k in range(args.folds):
        held, train = fold == k, fold != k
        sub = select_features(feats, train)
        head, report = refit(head0, sub, RefitConfig(seed=args.seed, selection=args.selection,
                                                     cv=CVConfig(seed=args.seed)))
        p = presence_of(head, feats.x)
        if args.selection == "cv":
            cal = report["calibration"]["calibrated"]
            thr, train_mcc = cal["threshold"], cal["mcc"]
        else:
            pairs = [Pair("", s, "", kd, bool(t), float(v), False) for s, kd, t, v in
                     zip(np.asarray(feats.source)[train], np.asarray(feats.kind)[train], feats.y[train], p[train])]
            thr, train_mcc = calibrate(pairs)
        row = {"fold": k, "cases": len({g for g, h in zip(groups, held) if h}), "epochs": report["epochs"],
               "threshold": round(thr, 4), "train_mcc": round(train_mcc, 4), **score(p, thr, feats, held)}
        if auto is not None:
            row.update({k2: v for k2, v in score(presence_of(head, auto.x), thr, auto, auto_fold == k).items()
                        if k2 != "mcc"})
        per_fold.append(row)
        add(refit_total, row)
        add(shipped_total, score(shipped, shipped_thr, feats, held))
        if auto is not None:
            add(shipped_total, score(shipped_auto, shipped_thr, auto, auto_fold == k))
        print(json.dumps(row), flush=True)

    def rate(d: dict) -> dict:
        return {k: f"{v[0]}/{v[1]} = {v[0] / max(1, v[1]):.3f}" for k, v in d.items()}

    val = split_of == "validation"
    shipped_val = score(shipped, shipped_thr, feats, val)
    if auto is not None:
        shipped_val.update(score(shipped_auto, shipped_thr, auto, auto_split == "validation"))
    summary = {"model": args.model, "sources": args.sources or "all", "folds": args.folds, "selection": args.selection,
               "refit_from": args.refit_from or args.model, "cases": len(set(groups)), "rows": int(len(feats.y)),
               "refit_per_fold (held-out cases)": rate(refit_total),
               "refit_mcc_per_fold": [r["mcc"] for r in per_fold],
               "shipped_head_all_cases (train cases seen in training)": rate(shipped_total),
               "shipped_head_validation_cases": rate({k: v for k, v in shipped_val.items() if isinstance(v, list)}),
               "shipped_threshold": shipped_thr}
    if auto is not None:  # images without a pixel-size estimate: segment(mpp="auto") asks for it, so no answer to score
        n_none = sum(v == "none" and p == "tumor" for v, p in zip(feats.view, feats.prompt))
        summary["tumor_rows_without_estimate"] = n_none - sum(p == "tumor" for p in auto.prompt)
    (out / "presence_cv.json").write_text(json.dumps({"summary": summary, "folds": per_fold}, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
