"""The presence refit's fitting pieces (:mod:`.presence_refit`): per-row weights that balance cells, the weighted
log-loss, and a head fit from its current weights with an L2 pull toward them."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["balanced_log_loss", "cell_weights", "fit_head", "grouped_holdout"]


def cell_weights(*columns: Sequence) -> np.ndarray:
    """``float32 [N]``: every cell of the given columns (e.g. source, kind, truth) gets the same total weight;
    mean weight 1."""
    keys = ["|".join(str(c) for c in row) for row in zip(*columns)]
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = (1.0 / counts[inv]).astype(np.float32)
    return w * (len(w) / w.sum())


def _weighted_log_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    return float((F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum())


def balanced_log_loss(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> float:
    with torch.no_grad():
        return _weighted_log_loss(head(x).squeeze(-1), y, w)


def fit_head(head: torch.nn.Module, x: np.ndarray, y: np.ndarray, w: np.ndarray, *, epochs: int, lr: float = 1e-3,
             l2: float = 1e-3, batch_size: int = 256, seed: int = 0,
             eval_set: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
             return_best: bool = False, eval_probs: list | None = None) -> tuple[torch.nn.Module, list[float]]:
    """A copy of ``head`` trained on ``(x, y)`` with per-row weights ``w`` (AdamW, BCE, ``l2`` * squared
    distance to the initial weights); returns it and, with ``eval_set``, the weighted log-loss after each
    epoch (index 0: before training). ``return_best``: the head as it was at the epoch of least eval loss.
    ``eval_probs``: a list that receives, after each epoch (index 0: before training), ``float32 [M]``, the
    presences of ``eval_set``'s rows (the same forward pass as the loss)."""
    torch.manual_seed(seed)
    head = copy.deepcopy(head).float().train()
    init = [p.detach().clone() for p in head.parameters()]
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)), torch.from_numpy(w)
    ev = None if eval_set is None else tuple(torch.from_numpy(np.asarray(a, np.float32)) for a in eval_set)

    def evaluate() -> float:
        with torch.no_grad():
            logits = head(ev[0]).squeeze(-1)
        if eval_probs is not None:
            eval_probs.append(torch.sigmoid(logits).numpy())
        return _weighted_log_loss(logits, ev[1], ev[2])

    curve = [evaluate()] if ev else []
    best_state = copy.deepcopy(head.state_dict())
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for b in range(0, len(perm), batch_size):
            sel = perm[b:b + batch_size]
            loss = (F.binary_cross_entropy_with_logits(head(xt[sel]).squeeze(-1), yt[sel], reduction="none")
                    * wt[sel]).sum() / wt[sel].sum()
            loss = loss + l2 * sum(((p - q) ** 2).sum() for p, q in zip(head.parameters(), init))
            opt.zero_grad()
            loss.backward()
            opt.step()
        if ev:
            curve.append(evaluate())
            if return_best and curve[-1] < min(curve[:-1]):
                best_state = copy.deepcopy(head.state_dict())
    if return_best and ev:
        head.load_state_dict(best_state)
    return head.eval(), curve


def grouped_holdout(groups: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """``bool [N]``: rows whose group falls in a random ``fraction`` of the groups."""
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(uniq, max(1, int(round(fraction * len(uniq)))), replace=False).tolist())
    return np.array([g in held for g in groups])
