"""Tile grids and resampling for the builder (source pixels -> corpus tiles)."""
from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Start offsets covering ``[0, length)`` with windows of ``tile`` overlapping by at least ``overlap``.

    A side no longer than ``tile`` gives one window ``[0, length)``; otherwise windows step by
    ``tile - overlap`` and the last one is aligned to the far edge (so no window is padded).
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def tile_boxes(height: int, width: int, tile: int, overlap: int = 0) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` boxes, row-major."""
    return [(x, y, min(x + tile, width), min(y + tile, height))
            for y in tile_starts(height, tile, overlap) for x in tile_starts(width, tile, overlap)]


def resample_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``uint8 [H, W, 3]`` -> ``size`` (H, W): area (box) filter when shrinking, bilinear when enlarging."""
    from PIL import Image

    h, w = size
    if (h, w) == image.shape[:2]:
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    out = Image.fromarray(image).resize((w, h), Image.BOX if shrink else Image.BILINEAR)
    return np.asarray(out)


def resample_labels(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Integer/bool ``[H, W]`` label map -> ``size`` (H, W) with nearest neighbour (labels stay exact)."""
    h, w = size
    if (h, w) == mask.shape[:2]:
        return mask
    ys = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.int64), mask.shape[0] - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.int64), mask.shape[1] - 1)
    return mask[ys[:, None], xs[None, :]]


def tissue_fraction(image: np.ndarray, *, white: int = 220, step: int = 4) -> float:
    """Fraction of (subsampled) pixels that are not background glass: mean intensity below ``white``."""
    sub = image[::step, ::step].astype(np.int16)
    return float((sub.mean(axis=-1) < white).mean()) if sub.size else 0.0
