"""Refit the presence head alone on a trained model's own decoder features (everything else frozen).

    python -m pathsegmentor.training.presence_refit MODEL_DIR --data CORPUS --out NEW_MODEL_DIR

Why: the presence head is a 3-layer MLP over ``[prompt token, mask token]`` (512 values) after the two-way
transformer. In the joint run it saw few certain negatives of some kinds (43 Normal EBHI-Seg crops are the
only images where "tumor" is certainly absent), so it answered "tumor" on Normal biopsies. Those features
are cheap to collect once and the head is cheap to refit, without touching the masks.

Steps (all on the corpus' **train** split; validation is never read):

1. **Collect** (:mod:`.presence_features`): for each train image, the prompts of
   :func:`pathsegmentor.evaluation.presence.asked_prompts` (annotated categories, certain absent categories,
   out-of-pathology phrases from the train list, another organ's concepts), sent through
   ``model.segment(..., vocabulary="open")``; a forward hook on the presence head records each prompt's 512-d
   input. Sources whose pixel size is estimated (``views_none``) are also run with the pixel size unknown
   (``mpp=None``), as a user with such images would.
2. **Select** the number of epochs on a hold-out of train *cases* (grouped by ``patient_id``): the epoch
   count with the best balanced log-loss there. ``--selection cv`` (:mod:`.presence_selection`, v9 on): the
   learning rate, L2 pull and epochs by K-fold cross-validation over cases and over negative phrases, and the
   threshold from the out-of-fold presences (``presence_calibration_oof.json``).
3. **Fit** the head from its current weights on all train features for that many epochs: BCE, every
   (source, kind, truth) cell weighted equally (the few certain diagnosis negatives are not outweighed by the
   many easy phrase negatives), an L2 pull toward the initial weights.
4. **Write** ``NEW_MODEL_DIR``: the config copied, ``model.safetensors`` with only ``presence_head.*``
   replaced, and ``presence_refit.json`` (data counts, selection curve, hold-out figures). Recalibrate the
   threshold afterwards with ``python -m pathsegmentor.evaluation.presence NEW_MODEL_DIR --write`` (with
   ``--selection cv``, pass ``presence_calibration_oof.json`` to ``evaluation.settings --calibration`` instead).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .presence_fit import balanced_log_loss, cell_weights, fit_head, grouped_holdout
from .presence_selection import CVConfig, oof_calibration, select_by_cv
from .presence_features import (PresenceFeatures, capture_presence_inputs, collect_features, concat_features,
                                load_features, save_features, with_synonyms)

__all__ = ["CVConfig", "HEAD_PREFIX", "PresenceFeatures", "RefitConfig", "balanced_log_loss", "capture_presence_inputs",
           "cell_weights", "collect_features", "concat_features", "fit_head", "grouped_holdout", "load_features",
           "main", "refit", "save_features", "with_synonyms", "write_model"]

HEAD_PREFIX = "mask_decoder.presence_head."


@dataclass
class RefitConfig:
    max_epochs: int = 60
    lr: float = 1e-3
    l2: float = 1e-3
    holdout_fraction: float = 0.25
    seed: int = 0
    selection: str = "holdout"  # holdout | cv (.presence_selection: lr, l2, epochs and threshold out of fold)
    cv: CVConfig = field(default_factory=CVConfig)


def refit(head: torch.nn.Module, feats: PresenceFeatures, cfg: RefitConfig) -> tuple[torch.nn.Module, dict]:
    """Choose the epoch count on a grouped hold-out of ``feats`` (``cfg.selection="cv"``: lr, l2, epochs and the
    threshold by :func:`.presence_selection.select_by_cv`), then fit on all of them (see the module docstring);
    returns the new head and a report."""
    from ..evaluation.presence import calibrate, Pair

    src, kind = np.asarray(feats.source), np.asarray(feats.kind)
    w = cell_weights(src, kind, feats.y)
    if cfg.selection == "cv":
        choice, oof = select_by_cv(head, feats, cfg.cv)
        new, _ = fit_head(head, feats.x, feats.y, w, epochs=choice["epochs"], lr=choice["lr"], l2=choice["l2"],
                          seed=cfg.seed)
        return new, {"config": asdict(cfg), "rows": int(len(feats.y)), "positives": int(feats.y.sum()),
                     "epochs": choice["epochs"], "cv": choice, "calibration": oof_calibration(feats, oof, cfg.cv.folds),
                     "counts": _counts(feats)}
    if cfg.selection != "holdout":
        raise ValueError(f"RefitConfig.selection={cfg.selection!r}; choose 'holdout' or 'cv'")
    held = grouped_holdout([f"{s}|{g}" for s, g in zip(feats.source, feats.group)], cfg.holdout_fraction, cfg.seed)
    tr = ~held
    w_tr, w_held = cell_weights(src[tr], kind[tr], feats.y[tr]), cell_weights(src[held], kind[held], feats.y[held])
    # the hold-out run: its curve picks the epoch count; its head at that epoch gives the hold-out MCC
    sel_head, curve = fit_head(head, feats.x[tr], feats.y[tr], w_tr, epochs=cfg.max_epochs, lr=cfg.lr, l2=cfg.l2,
                               seed=cfg.seed, eval_set=(feats.x[held], feats.y[held], w_held), return_best=True)
    best_epochs = int(np.argmin(curve))
    new, _ = fit_head(head, feats.x, feats.y, w, epochs=best_epochs, lr=cfg.lr, l2=cfg.l2, seed=cfg.seed)

    def holdout_mcc(h: torch.nn.Module) -> float:
        with torch.no_grad():
            p = torch.sigmoid(h(torch.from_numpy(feats.x[held])).squeeze(-1)).numpy()
        pairs = [Pair("", s, "", k, bool(t), float(v), False) for s, k, t, v in
                 zip(np.asarray(feats.source)[held], np.asarray(feats.kind)[held], feats.y[held], p)]
        return round(calibrate(pairs)[1], 4)

    report = {"config": asdict(cfg), "rows": int(len(feats.y)), "positives": int(feats.y.sum()),
              "holdout_rows": int(held.sum()), "epochs": best_epochs,
              "holdout_log_loss": [round(c, 4) for c in curve],
              "holdout_mcc_before": holdout_mcc(head), "holdout_mcc_after": holdout_mcc(sel_head),
              "counts": _counts(feats)}
    return new, report


def _counts(feats: PresenceFeatures) -> dict[str, int]:
    keys = [f"{s}/{v}/{k}/{'pos' if t else 'neg'}" for s, v, k, t in zip(feats.source, feats.view, feats.kind, feats.y)]
    u, c = np.unique(keys, return_counts=True)
    return {str(a): int(b) for a, b in zip(u, c)}


def write_model(src_dir: Path, out_dir: Path, head: torch.nn.Module, report: dict) -> Path:
    """``out_dir``: ``src_dir``'s config and weights with ``presence_head.*`` replaced, plus the report."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(src_dir / "model.safetensors"))
    new = {HEAD_PREFIX + k: v.detach().to(state[HEAD_PREFIX + k].dtype).contiguous()
           for k, v in head.state_dict().items()}
    missing = sorted(set(new) - set(state))
    if missing:
        raise KeyError(f"{src_dir}/model.safetensors has no {missing}; is it a pathsegmentor model with a presence "
                       f"head?")
    state.update(new)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt", "presence_refit": "1"})
    shutil.copyfile(src_dir / "config.json", out_dir / "config.json")
    tmp.replace(out_dir / "model.safetensors")
    (out_dir / "presence_refit.json").write_text(json.dumps(report, indent=1) + "\n")
    if "calibration" in report:  # cross-validated: the out-of-fold threshold, in evaluation.presence's format
        (out_dir / "presence_calibration_oof.json").write_text(json.dumps({"summary": report["calibration"]}, indent=1))
    return out_dir


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pathsegmentor.training.presence_refit",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model dir (config.json + model.safetensors)")
    ap.add_argument("--data", required=True, help="PathSeg corpus (its train split is used)")
    ap.add_argument("--out", required=True, help="new model dir to write")
    ap.add_argument("--views-none", nargs="*", default=["ebhi_seg"],
                    help="sources also run with the pixel size unknown (default: ebhi_seg, whose mpp is estimated)")
    ap.add_argument("--per-source", type=int, default=0, help="at most N train images per source")
    ap.add_argument("--synonyms", type=int, default=0,
                    help="also ask N ontology synonyms of each annotated / certainly absent category (default 0)")
    ap.add_argument("--synonym-features", default=None,
                    help="a second cache (.npz) of synonym rows only (--synonyms, default 1), collected if missing and "
                         "added to --features: adds synonyms to an earlier collection without redoing it")
    ap.add_argument("--features", default=None, help="cache the collected features in this .npz (reused if present)")
    ap.add_argument("--max-epochs", type=int, default=RefitConfig.max_epochs)
    ap.add_argument("--lr", type=float, default=RefitConfig.lr)
    ap.add_argument("--l2", type=float, default=RefitConfig.l2)
    ap.add_argument("--selection", choices=("holdout", "cv"), default="holdout",
                    help="holdout: epochs on one grouped hold-out; cv: lr / l2 / epochs and the threshold out of fold over "
                         "cases and negative phrases (writes presence_calibration_oof.json)")
    ap.add_argument("--cv-folds", type=int, default=CVConfig.folds)
    ap.add_argument("--cv-l2", type=float, nargs="+", default=list(CVConfig.l2s), help="L2 pulls tried (cv)")
    ap.add_argument("--cv-lr", type=float, nargs="+", default=list(CVConfig.lrs), help="learning rates tried (cv)")
    args = ap.parse_args(argv)

    from data_builders import load_pathseg

    from ..modeling.factory import from_pretrained
    from .prompt_sampling import negative_phrases

    src, out = Path(args.model), Path(args.out)
    if not (src / "config.json").is_file() or not (src / "model.safetensors").is_file():
        print(f"error: '{src}' is not a model directory (config.json + model.safetensors); pass a trained model's "
              f"folder, e.g. pathsegmentor/weights/pathsegmentor-tiny", file=sys.stderr)
        return 2
    if out.resolve() == src.resolve():
        print(f"error: --out '{out}' is the input model; write the refit model to a new folder", file=sys.stderr)
        return 2
    if not Path(args.data).is_dir():
        print(f"error: corpus directory not found: '{args.data}'. Build it with pathseg-build.", file=sys.stderr)
        return 2
    try:
        cv = CVConfig(folds=args.cv_folds, max_epochs=args.max_epochs, lrs=tuple(args.cv_lr), l2s=tuple(args.cv_l2))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = from_pretrained(str(src)).eval()
    corpus = None

    def collect(path: Path | None, **kw) -> PresenceFeatures:
        nonlocal corpus
        if path is not None and path.is_file():
            return load_features(path)
        corpus = corpus or load_pathseg(args.data)
        with torch.no_grad():
            feats = collect_features(model, corpus, phrases=negative_phrases()["train"], views_none=args.views_none,
                                     per_source=args.per_source, **kw)
        if path is not None:
            save_features(path, feats)
        return feats

    feats = collect(Path(args.features) if args.features else None,
                    n_synonyms=0 if args.synonym_features else args.synonyms)
    if args.synonym_features:
        feats = concat_features(feats, collect(Path(args.synonym_features), n_synonyms=args.synonyms or 1,
                                               only_synonyms=True, seed=1))
    cfg = RefitConfig(max_epochs=args.max_epochs, lr=args.lr, l2=args.l2, selection=args.selection, cv=cv)
    head, report = refit(model.mask_decoder.presence_head, feats, cfg)
    report["source_model"] = str(src)
    write_model(src, out, head, report)
    print(json.dumps({k: report[k] for k in ("rows", "positives", "epochs", "holdout_mcc_before", "holdout_mcc_after")
                      if k in report}))
    if "calibration" in report:
        print(f"refit model written to {out}; its out-of-fold threshold is in {out / 'presence_calibration_oof.json'} "
              f"(python -m pathsegmentor.evaluation.settings {out} SETTINGS.yaml --calibration that file)")
    else:
        print(f"refit model written to {out}; calibrate its threshold next: "
              f"python -m pathsegmentor.evaluation.presence {out} --data {args.data} --split train --write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
