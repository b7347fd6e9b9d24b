"""Deep Zoom (DZI) for OpenSeadragon: the XML descriptor and tiles cut from a slide's pyramid.

DZI level ``L`` of a ``W x H`` image is the image scaled by ``2 ** (L - max_level)``, where
``max_level = ceil(log2(max(W, H)))``; tile ``(col, row)`` covers ``tile`` DZI pixels from
``(col * tile, row * tile)``, no overlap. Each tile is read from the coarsest pyramid level that is
still at least as fine as the DZI level, so a view costs a few region reads whatever the slide's size
(the whole slide is never decoded).
"""
from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np

from ..slide.reader import Level
from .files import ServeError

TILE = 256
MAX_SOURCE_SIDE = 4096  # a tile needing a larger read (a slide without a deep pyramid) is refused


def max_level(width: int, height: int) -> int:
    """The finest DZI level (full resolution)."""
    return max(0, math.ceil(math.log2(max(width, height, 1))))


def dzi_xml(width: int, height: int, *, tile: int = TILE, fmt: str = "jpeg") -> str:
    """The ``.dzi`` descriptor of a ``width x height`` image."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="0" '
            f'TileSize="{tile}"><Size Width="{width}" Height="{height}"/></Image>\n')


def pick_level(levels: list[Level], scale: float) -> Level:
    """The coarsest pyramid level whose downsample does not exceed ``scale`` (level 0 at worst)."""
    fine = [lv for lv in levels if lv.downsample <= scale * 1.001]
    return max(fine, key=lambda lv: lv.downsample) if fine else levels[0]


def tile_box(width: int, height: int, level: int, col: int, row: int, tile: int = TILE):
    """Level-0 box ``(x0, y0, x1, y1)`` of a DZI tile and its size ``(w, h)`` in DZI pixels; a
    :class:`ServeError` (404) for a tile outside the image."""
    top = max_level(width, height)
    if not 0 <= level <= top:
        raise ServeError(404, f"DZI level {level} does not exist; levels are 0..{top}.")
    scale = 2.0 ** (top - level)
    lw, lh = math.ceil(width / scale), math.ceil(height / scale)
    if not (0 <= col < math.ceil(lw / tile) and 0 <= row < math.ceil(lh / tile)):
        raise ServeError(404, f"tile {col}_{row} is outside DZI level {level} "
                              f"({math.ceil(lw / tile)} x {math.ceil(lh / tile)} tiles).")
    tw, th = min(tile, lw - col * tile), min(tile, lh - row * tile)
    x0, y0 = col * tile * scale, row * tile * scale
    return (x0, y0, min(width, x0 + tw * scale), min(height, y0 + th * scale)), (tw, th), scale


def render_tile(levels: list[Level], read: Callable[[int, int, int, int, int], np.ndarray],
                level: int, col: int, row: int, tile: int = TILE) -> np.ndarray:
    """``uint8 [h, w, C]`` of DZI tile ``(level, col, row)``; ``read(level, y, x, h, w)`` reads a pyramid
    level region (as :meth:`SlideReader.read_region`)."""
    from PIL import Image

    width, height = levels[0].width, levels[0].height
    (x0, y0, x1, y1), (tw, th), scale = tile_box(width, height, level, col, row, tile)
    src = pick_level(levels, scale)
    fx, fy = src.width / width, src.height / height  # level-0 -> source level
    sx0, sy0, sx1, sy1 = x0 * fx, y0 * fy, x1 * fx, y1 * fy
    ix0, iy0 = int(math.floor(sx0)), int(math.floor(sy0))
    ix1, iy1 = min(src.width, int(math.ceil(sx1))), min(src.height, int(math.ceil(sy1)))
    if max(ix1 - ix0, iy1 - iy0) > MAX_SOURCE_SIDE:
        raise ServeError(413, f"this zoom level needs a {ix1 - ix0}x{iy1 - iy0} px read because the slide has "
                              f"no pyramid level near downsample {scale:g}; zoom in, or convert the slide to a "
                              f"pyramidal TIFF (e.g. vips tiffsave --tile --pyramid).")
    region = read(src.index, iy0, ix0, iy1 - iy0, ix1 - ix0)
    if region.shape[:2] == (th, tw):
        return region
    im = Image.fromarray(region)
    return np.asarray(im.resize((tw, th), Image.Resampling.BOX if ix1 - ix0 > tw else Image.Resampling.BILINEAR,
                                box=(sx0 - ix0, sy0 - iy0, sx1 - ix0, sy1 - iy0)))


def encode(arr: np.ndarray, fmt: str) -> bytes:
    """``arr`` as JPEG (quality 85) or PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()
