"""Deterministic patient-grouped splits: no patient in two splits."""
from __future__ import annotations

import hashlib
from typing import Iterable

SPLITS = ("train", "validation", "test")
_ALIASES = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
            "validation": "validation", "test": "test", "testing": "test"}


def normalize_split(split: str | None) -> str | None:
    if split is None:
        return None
    s = _ALIASES.get(str(split).strip().lower())
    if s is None:
        raise ValueError(f"unknown split '{split}'. Available: {list(SPLITS)} (or None for a grouped split)")
    return s


def group_key(group: str, seed: int) -> str:
    """Stable sort key of a group: SHA-256 of ``"<seed>:<group>"`` (independent of Python's hash seed)."""
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def assign_groups(groups: Iterable[str], *, val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 0) -> dict[str, str]:
    """Map every group (patient) to a split: groups sorted by :func:`group_key`, the first
    ``round(test_fraction * n)`` to test, the next ``round(val_fraction * n)`` to validation, the rest to train.

    A non-zero fraction gets at least one group when there are at least two groups, and train always keeps
    at least one group.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
                         f"and sum to less than 1")
    order = sorted(set(groups), key=lambda g: (group_key(g, seed), g))
    n = len(order)

    def count(f: float) -> int:
        k = int(round(f * n))
        return max(k, 1) if f > 0 and n >= 2 else k

    n_test = count(test_fraction)
    n_val = count(val_fraction)
    while n_test + n_val >= n and n_test + n_val > 0 and n > 0:  # keep a training group
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    out = {}
    for i, g in enumerate(order):
        out[g] = "test" if i < n_test else ("validation" if i < n_test + n_val else "train")
    return out
