"""Overlapping tiles over a large image and blended stitching of per-tile predictions.

Shared by :meth:`PathSegmentor.segment` (images larger than the model's window) and whole-slide
inference. Each tile's prediction is weighted by a separable ramp that falls towards the tile's
borders (borders that touch the image edge keep full weight), so seams vanish and a pixel far from
any seam gets exactly its single-tile value. Before blending, each tile's probabilities are gated by its own
presence (:func:`gate_by_presence`): a tile that judges a prompt absent adds no mask pixels for it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """A window ``[y0:y1, x0:x1]`` of the image (pixel coordinates, end-exclusive)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Row-major tiles of at most ``tile x tile`` covering ``height x width`` with at least
    ``overlap`` pixels shared between neighbours; the last row/column is flush with the edge."""
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
    stride = tile - overlap
    return [Tile(y, x, min(y + tile, height), min(x + tile, width))
            for y in _starts(height, tile, stride) for x in _starts(width, tile, stride)]


def blend_weights(t: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    """``float32 [h, w]`` weights: linear ramps of length ``overlap`` on inner borders, 1 elsewhere."""
    h, w = t.shape

    def ramp(n: int, at_start: bool, at_end: bool) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            edge = (np.arange(k, dtype=np.float32) + 0.5) / k
            if not at_start:
                r[:k] = np.minimum(r[:k], edge)
            if not at_end:
                r[n - k:] = np.minimum(r[n - k:], edge[::-1])
        return r

    wy = ramp(h, t.y0 == 0, t.y1 == height)
    wx = ramp(w, t.x0 == 0, t.x1 == width)
    return wy[:, None] * wx[None, :]


class BlendAccumulator:
    """Accumulate weighted per-tile predictions ``[C, h, w]`` into a ``[C, H, W]`` canvas.

    For whole slides use one accumulator per output region (it holds the full canvas in memory).
    """

    def __init__(self, channels: int, height: int, width: int, overlap: int) -> None:
        self.height, self.width, self.overlap = height, width, overlap
        self.sum = np.zeros((channels, height, width), np.float32)
        self.weight = np.zeros((height, width), np.float32)

    def add(self, t: Tile, pred: np.ndarray) -> None:
        w = blend_weights(t, self.height, self.width, self.overlap)
        self.sum[:, t.y0:t.y1, t.x0:t.x1] += pred * w
        self.weight[t.y0:t.y1, t.x0:t.x1] += w

    def result(self) -> np.ndarray:
        return self.sum / np.maximum(self.weight, 1e-12)


def gate_by_presence(probs: np.ndarray, presence: np.ndarray, threshold: float) -> np.ndarray:
    """One window's probabilities ``[n, h, w]`` with the rows whose presence (``[n]``) is below ``threshold`` set
    to 0: a window that judges a prompt absent contributes no mask pixels for it. ``segment()`` and whole slides
    gate every window this way before blending."""
    return probs * (np.asarray(presence) >= threshold).astype(probs.dtype)[:, None, None]
