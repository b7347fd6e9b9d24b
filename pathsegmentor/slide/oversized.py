"""The nucleus size limit on a whole slide: the connected parts of a nucleus/cell mask larger than
``inference.max_cell_component_um2`` (ink, pigment, debris) removed from the mask TIFF, and with it from the
objects table and the GeoJSON, as ``segment()`` removes them (:mod:`pathsegmentor.inference.plausibility`).

A part can span many row strips, so the slide is read twice: the first pass labels each strip (4-connected, as
:func:`~pathsegmentor.inference.plausibility.oversized_parts`), joins the labels that touch across strip seams
(union-find) and sums each part's area; the second labels the strips again the same way and sets the pixels of
the parts over the limit to 0. Memory holds one strip and one integer per connected part.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np


class _Parts:
    """Connected parts over a stream of strips: union-find over global label ids, with each id's pixel count."""

    def __init__(self) -> None:
        self.parent = np.zeros(1024, np.int64)
        self.area = np.zeros(1024, np.int64)
        self.n = 0  # ids 1..n are used; id 0 is the background

    def add(self, areas: np.ndarray) -> int:
        """Registers ``len(areas)`` new parts (pixel counts ``areas``); returns the id offset of the strip."""
        off, k = self.n, len(areas)
        need = off + k + 1
        if need > len(self.parent):
            size = max(need, 2 * len(self.parent))
            self.parent = np.concatenate([self.parent, np.zeros(size - len(self.parent), np.int64)])
            self.area = np.concatenate([self.area, np.zeros(size - len(self.area), np.int64)])
        self.parent[off + 1:need] = np.arange(off + 1, need)
        self.area[off + 1:need] = areas
        self.n = off + k
        return off

    def _find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = int(self.parent[root])
        while self.parent[i] != root:
            self.parent[i], i = root, int(self.parent[i])
        return root

    def union(self, pairs: np.ndarray) -> None:
        """Joins the parts of each ``[k, 2]`` row of global ids."""
        for a, b in pairs:
            ra, rb = self._find(int(a)), self._find(int(b))
            if ra != rb:
                self.parent[max(ra, rb)] = min(ra, rb)

    def over(self, max_px: float) -> np.ndarray:
        """``bool [n + 1]``: the ids whose whole part has more than ``max_px`` pixels (id 0: False)."""
        parent = self.parent[:self.n + 1].copy()
        while True:  # pointer jumping to the roots
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
        total = np.bincount(parent, weights=self.area[:self.n + 1], minlength=self.n + 1)
        big = total[parent] > max_px
        big[0] = False
        return big


def _label(strip: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    from scipy import ndimage as ndi

    return ndi.label(strip > threshold)


def drop_oversized_strips(make_strips: Callable[[], Iterator[np.ndarray]], threshold: float,
                          max_px: float) -> Iterator[np.ndarray]:
    """The strips of ``make_strips()`` (``[n, W]`` row strips of probabilities in the output dtype, in row order;
    called twice) with the pixels of the mask's (``strip > threshold``) connected parts of more than ``max_px``
    pixels set to 0. ``max_px <= 0``: the strips unchanged."""
    if max_px <= 0:
        yield from make_strips()
        return
    parts = _Parts()
    offsets: list[int] = []
    prev_last: np.ndarray | None = None
    for strip in make_strips():
        lab, n = _label(strip, threshold)
        off = parts.add(np.bincount(lab.ravel(), minlength=n + 1)[1:])
        offsets.append(off)
        if not len(lab):
            continue
        first = np.where(lab[0] > 0, lab[0] + off, 0)
        if prev_last is not None:
            both = (prev_last > 0) & (first > 0)
            if both.any():
                parts.union(np.unique(np.stack([prev_last[both], first[both]], 1), axis=0))
        prev_last = np.where(lab[-1] > 0, lab[-1] + off, 0)
    big = parts.over(max_px)
    if not big.any():
        yield from make_strips()
        return
    for strip, off in zip(make_strips(), offsets):
        lab, _ = _label(strip, threshold)
        gone = big[np.where(lab > 0, lab + off, 0)]
        yield np.where(gone, np.zeros((), strip.dtype), strip) if gone.any() else strip
