"""Step 2 of the presence refit (:mod:`.presence_refit`), cross-validated: the refit's learning rate, L2 pull and
epoch count, and the presence threshold, chosen on **cases and phrases the fitted head never saw**.

Why: a single hold-out of a quarter of the training cases gives a noisy curve (v8's refit picked epoch 58 of 60 from a
curve whose epochs 2 and 58 differed by noise), and a threshold calibrated on the very rows the head was fit on is
in-sample (v8: training MCC 0.991, validation 0.877). Here every training row is scored once by a head that did not
see its case, and out-of-pathology / other-organ phrases are split into folds too, so a held-out fold's phrases are
new to its head, as a user's phrases are.

* :func:`case_phrase_folds`: rows -> fold of their case (``source|group``); negative phrases -> fold of the phrase.
* :func:`select_by_cv`: every (lr, l2) of the grid fit on K-1 folds for up to ``max_epochs``, the balanced log-loss
  of the held-out fold after each epoch, averaged over folds; the least mean loss picks (lr, l2, epochs). The
  out-of-fold presences at that choice calibrate the threshold (MCC-maximising, as
  :func:`pathsegmentor.evaluation.presence.calibrate`).

Training split only; validation is never read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .presence_features import PresenceFeatures
from .presence_fit import cell_weights, fit_head

__all__ = ["CVConfig", "case_phrase_folds", "fold_masks", "oof_calibration", "select_by_cv"]

PHRASE_KINDS = ("phrase", "organ")


@dataclass
class CVConfig:
    """The cross-validated refit's grid. ``folds``: K case folds (and K phrase folds); ``max_epochs``: the longest
    run scored; ``lrs`` / ``l2s``: the AdamW learning rates and L2 pulls toward the joint head tried."""

    folds: int = 4
    max_epochs: int = 40
    lrs: Sequence[float] = (3e-4,)
    l2s: Sequence[float] = (1e-3, 1e-2, 3e-2)
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.folds) < 2:
            raise ValueError(f"CVConfig.folds={self.folds!r}: cross-validation needs at least 2 folds; pass 2 or more")
        if int(self.max_epochs) < 1 or not self.lrs or not self.l2s:
            raise ValueError(f"CVConfig: max_epochs={self.max_epochs!r}, lrs={self.lrs!r}, l2s={self.l2s!r}; need at "
                             f"least one epoch and one value of each")


def case_phrase_folds(feats: PresenceFeatures, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(case_fold int [N], phrase_fold int [N])``: each row's case fold (cases shuffled with ``seed``, dealt round
    robin), and for phrase / organ negatives the fold of their phrase (-1 for other rows)."""
    rng = np.random.default_rng(seed)
    cases = np.array([f"{s}|{g}" for s, g in zip(feats.source, feats.group)])
    uc = np.array(sorted(set(cases.tolist())))
    rng.shuffle(uc)
    if len(uc) < k:
        raise ValueError(f"{len(uc)} training cases cannot fill {k} folds; lower --cv-folds to at most {len(uc)}")
    cf = {c: i % k for i, c in enumerate(uc)}
    kinds, prompts = np.asarray(feats.kind), np.asarray(feats.prompt)
    phr = np.isin(kinds, PHRASE_KINDS)
    up = np.array(sorted(set(prompts[phr].tolist())))
    rng.shuffle(up)
    pf = {p: i % k for i, p in enumerate(up)}
    return (np.array([cf[c] for c in cases]),
            np.array([pf[p] if is_p else -1 for p, is_p in zip(prompts, phr)]))


def fold_masks(case_fold: np.ndarray, phrase_fold: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit bool [N], held bool [N])`` of fold ``k``: held = its cases (negative phrases only those of its phrase
    fold); fit = the other cases (negative phrases only those of the other phrase folds). No case and no negative
    phrase is in both."""
    phr = phrase_fold >= 0
    held = (case_fold == k) & (~phr | (phrase_fold == k))
    fit = (case_fold != k) & (~phr | (phrase_fold != k))
    return fit, held


def _weights(feats: PresenceFeatures, mask: np.ndarray) -> np.ndarray:
    return cell_weights(np.asarray(feats.source)[mask], np.asarray(feats.kind)[mask], feats.y[mask])


def select_by_cv(head: torch.nn.Module, feats: PresenceFeatures, cfg: CVConfig) -> tuple[dict, np.ndarray]:
    """``(choice, oof)``: the grid point and epoch count of least mean held-out loss (``choice``: lr, l2, epochs,
    the mean curve of every grid point) and ``oof float [N]``, each row's presence from the head of the fold that held
    it out at that choice (NaN for rows no fold held: phrases whose case and phrase folds differ)."""
    cfold, pfold = case_phrase_folds(feats, cfg.folds, cfg.seed)
    folds = []  # per fold: fit rows, held rows, and their cell weights (computed once for the whole grid)
    for k in range(cfg.folds):
        fit, held = fold_masks(cfold, pfold, k)
        folds.append((fit, held, _weights(feats, fit), _weights(feats, held)))
    curves: dict[str, list[float]] = {}
    best = (np.inf, 0.0, 0.0, 0, [])
    for lr in cfg.lrs:
        for l2 in cfg.l2s:
            per_fold, probs = [], []
            for fit, held, w_fit, w_held in folds:
                probs.append([])  # the held-out presences after each epoch: the out-of-fold answer at any epoch
                _, c = fit_head(head, feats.x[fit], feats.y[fit], w_fit, epochs=cfg.max_epochs, lr=lr, l2=l2,
                                seed=cfg.seed, eval_set=(feats.x[held], feats.y[held], w_held), eval_probs=probs[-1])
                per_fold.append(c)
            mean = np.mean(per_fold, axis=0)
            curves[f"lr={lr:g} l2={l2:g}"] = [round(float(v), 4) for v in mean]
            e = int(np.argmin(mean))
            if mean[e] < best[0]:
                best = (float(mean[e]), lr, l2, e, [p[e] for p in probs])
    _, lr, l2, epochs, at_best = best
    oof = np.full(len(feats.y), np.nan)
    for (_, held, _, _), p in zip(folds, at_best):
        oof[held] = p
    choice = {"lr": lr, "l2": l2, "epochs": epochs, "mean_heldout_log_loss": round(best[0], 4),
              "folds": cfg.folds, "grid_curves": curves}
    return choice, oof


def oof_calibration(feats: PresenceFeatures, oof: np.ndarray, folds: int) -> dict:
    """The calibration summary (``evaluation.presence``'s format: ``split``, ``calibrated``, ``at_0.5``) of the
    out-of-fold presences: the MCC-maximising threshold over every scored training row."""
    from ..evaluation.presence import Pair, calibrate, summarize_pairs

    m = ~np.isnan(oof)
    pairs = [Pair("", s, p, k, bool(t), float(v), bool(v < 0.5)) for s, p, k, t, v in
             zip(np.asarray(feats.source)[m], np.asarray(feats.prompt)[m], np.asarray(feats.kind)[m], feats.y[m],
                 oof[m])]
    thr, _ = calibrate(pairs)
    cal = summarize_pairs([Pair(q.image_id, q.source, q.prompt, q.kind, q.truth, q.presence, q.presence < thr)
                           for q in pairs], thr)
    return {"split": f"train, out of fold ({folds} folds of cases and of negative phrases)",
            "calibrated": cal, "at_0.5": summarize_pairs(pairs, 0.5)}
