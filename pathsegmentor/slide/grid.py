"""The working grid of a slide run: one pyramid level resampled to the model's mpp, read tile by tile
with the exact sub-pixel source box."""
from __future__ import annotations

import math

import numpy as np

from .reader import Level, SlideReader


class WorkGrid:
    """The slide at the model's resolution: ``level`` resampled by the remaining factor.

    Working pixel ``(r, c)`` covers level pixels ``[c*fx, (c+1)*fx) x [r*fy, (r+1)*fy)`` and level-0
    pixels ``[c*sx0, (c+1)*sx0) x ...`` (corner convention). Tiles are resampled one at a time with
    the exact sub-pixel source box, so overlapping tiles see identical pixels.
    """

    def __init__(self, reader: SlideReader, level: Level, model_mpp: float) -> None:
        self.reader, self.level = reader, level
        s = level.mpp / model_mpp
        if abs(s - 1.0) < 1e-3:
            s = 1.0
        self.height = max(1, round(level.height * s))
        self.width = max(1, round(level.width * s))
        self.exact = (self.height, self.width) == (level.height, level.width)
        self.fy, self.fx = level.height / self.height, level.width / self.width
        h0, w0 = reader.dimensions
        self.sy0, self.sx0 = h0 / self.height, w0 / self.width
        self.mpp_x, self.mpp_y = reader.mpp * self.sx0, reader.mpp * self.sy0

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """``uint8 [y1-y0, x1-x0, 3]`` of the working grid."""
        lv = self.level.index
        if self.exact:
            return self.reader.read_region(lv, y0, x0, y1 - y0, x1 - x0)
        from PIL import Image

        fy0, fy1, fx0, fx1 = y0 * self.fy, y1 * self.fy, x0 * self.fx, x1 * self.fx
        pad = 2 + int(math.ceil(max(self.fx, self.fy)))
        iy0, ix0 = max(0, int(math.floor(fy0)) - pad), max(0, int(math.floor(fx0)) - pad)
        iy1 = min(self.level.height, int(math.ceil(fy1)) + pad)
        ix1 = min(self.level.width, int(math.ceil(fx1)) + pad)
        region = self.reader.read_region(lv, iy0, ix0, iy1 - iy0, ix1 - ix0)
        shrink = self.fx > 1.0 or self.fy > 1.0
        im = Image.fromarray(region).resize(
            (x1 - x0, y1 - y0), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR,
            box=(fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0))
        return np.array(im)

