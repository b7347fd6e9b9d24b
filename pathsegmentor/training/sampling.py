"""Which corpus image each training position draws: per-image sampling weights for the chosen balance
and the deterministic :class:`PositionSampler` (a resumed run skips the first batches and continues with
exactly the same stream)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


def sampling_weights(corpus, split: str, balance: str, sources: list[str] | None = None,
                     source_weights: dict[str, float] | None = None) -> np.ndarray:
    """Per-image sampling weights (sum 1) for the chosen balancing; images of excluded sources get 0.

    ``source_weights`` multiplies the balanced weight of every image of a source (``{"monuseg": 2.0}``: MoNuSeg
    drawn twice as often as the balance alone would draw it); sources not named keep 1."""
    table = corpus.images[split]
    src = np.asarray(table["source"])
    keep = np.ones(len(src), bool) if not sources else np.isin(src, sources)
    if not keep.any():
        raise ValueError(f"no images of sources {sources} in split '{split}' (sources there: {sorted(set(src))})")
    w = keep.astype(np.float64)
    if balance == "source":
        for s in set(src[keep]):
            sel = keep & (src == s)
            w[sel] = 1.0 / sel.sum()
    elif balance == "category":
        labels = table["labels"]
        counts: dict[str, int] = {}
        for ls in labels:
            for lb in ls:
                counts[lb] = counts.get(lb, 0) + 1
        for i, ls in enumerate(labels):
            if keep[i]:
                w[i] = np.mean([1.0 / counts[lb] for lb in ls]) if ls else min(1.0 / c for c in counts.values())
    elif balance != "none":
        raise ValueError(f"Unknown data.balance '{balance}'. Available: ['source', 'category', 'none']")
    present = sorted(str(x) for x in set(src[keep]))
    for name, factor in (source_weights or {}).items():
        if name not in present:
            raise ValueError(f"data.source_weights names '{name}', which has no image in split '{split}' "
                             f"(sources there: {present}); fix the name or drop the entry")
        if not factor > 0:
            raise ValueError(f"data.source_weights['{name}'] = {factor}: must be > 0 (to leave a source out, "
                             "list the others in data.sources)")
        w[src == name] *= float(factor)
    return w / w.sum()


class PositionSampler(Sampler):
    """Yields ``(position, image_index)`` for positions ``0..total-1``: image indices drawn i.i.d.
    from ``weights`` with a generator seeded by ``seed``. Deterministic, so a resumed run skips the
    first batches and continues with exactly the same stream."""

    def __init__(self, weights: np.ndarray, total: int, seed: int) -> None:
        self.weights = weights
        self.total = total
        self.seed = seed

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, 7919])
        idx = rng.choice(len(self.weights), size=self.total, p=self.weights)
        return iter([(i, int(j)) for i, j in enumerate(idx)])
