"""Tissue detection on a thumbnail: Otsu threshold on HSV saturation (glass is white/grey, stained
tissue is coloured), cleaned with a small closing, then looked up per tile or per output row."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``float32 [H, W]`` in [0, 1] of ``uint8 [H, W, 3]`` (computed in row blocks)."""
    out = np.empty(rgb.shape[:2], np.float32)
    for y in range(0, rgb.shape[0], 256):
        blk = rgb[y:y + 256]
        mx = blk.max(axis=2).astype(np.float32)
        mn = blk.min(axis=2).astype(np.float32)
        out[y:y + 256] = (mx - mn) / np.maximum(mx, 1.0)
    return out


def tissue_mask(thumb: np.ndarray, *, min_saturation: float = 0.05, dark: int = 40,
                min_pixels: int = 0) -> np.ndarray:
    """``bool [h, w]`` tissue on an RGB thumbnail; pieces smaller than ``min_pixels`` thumbnail pixels
    (dust, a faint speck on glass) are not tissue.

    Threshold: Otsu on saturation, but never below ``min_saturation`` (so an all-glass slide gives no
    tissue rather than noise); near-black pixels (< ``dark``: pen, scanner borders) are excluded.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    sat = saturation(thumb)
    thr = min_saturation
    if float(sat.max()) - float(sat.min()) > 1e-3:
        thr = max(min_saturation, float(threshold_otsu(sat)))
    mask = (sat > thr) & (thumb.max(axis=2) > dark)
    if mask.any():
        mask = ndi.binary_closing(mask, structure=np.ones((3, 3), bool), iterations=1) | mask
        mask = ndi.binary_fill_holes(mask)
    if min_pixels > 0 and mask.any():
        lab, _ = ndi.label(mask)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        mask = sizes[lab] >= min_pixels
    return mask


@dataclass
class TissueMap:
    """A thumbnail tissue mask mapped onto the working grid ``(height, width)``.

    ``skip_mask`` is the mask dilated by ``margin`` thumbnail pixels (used to skip tiles: generous,
    so tissue borders are always predicted); ``mask`` is used for tissue areas.
    """

    mask: np.ndarray
    height: int
    width: int
    margin: int = 1

    def __post_init__(self) -> None:
        from scipy import ndimage as ndi

        self.mask = np.asarray(self.mask, bool)
        self.skip_mask = (ndi.binary_dilation(self.mask, structure=np.ones((3, 3), bool), iterations=self.margin)
                          if self.margin and self.mask.any() else self.mask)
        th, tw = self.mask.shape
        self._fy, self._fx = th / self.height, tw / self.width

    def tile_has_tissue(self, y0: int, x0: int, y1: int, x1: int) -> bool:
        th, tw = self.mask.shape
        a0, a1 = int(math.floor(y0 * self._fy)), min(th, max(int(math.ceil(y1 * self._fy)), int(math.floor(y0 * self._fy)) + 1))
        b0, b1 = int(math.floor(x0 * self._fx)), min(tw, max(int(math.ceil(x1 * self._fx)), int(math.floor(x0 * self._fx)) + 1))
        return bool(self.skip_mask[a0:a1, b0:b1].any())

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """``bool [r1 - r0, width]``: tissue at working pixel centres of rows ``[r0, r1)``."""
        th, tw = self.mask.shape
        ys = np.minimum(((np.arange(r0, r1) + 0.5) * self._fy).astype(np.int64), th - 1)
        xs = np.minimum(((np.arange(self.width) + 0.5) * self._fx).astype(np.int64), tw - 1)
        return self.mask[ys][:, xs]

    def fraction(self) -> float:
        return float(self.mask.mean())
