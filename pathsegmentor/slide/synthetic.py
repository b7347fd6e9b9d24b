"""Synthetic pyramidal slides for tests and benchmarks, written tile by tile with tifffile.

A slide is white glass with pink tissue rectangles and dark purple disks/squares at known level-0
positions; each level is rendered from the shapes (pixel centres sampled in level-0 coordinates),
so every level shows the same objects at the same physical place.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

GLASS = (255, 255, 255)
TISSUE = (236, 170, 205)
NUCLEUS = (70, 40, 120)


@dataclass
class SlideSpec:
    """Shapes in level-0 pixels (corner coordinates): ``tissue`` boxes ``(x0, y0, x1, y1)``,
    ``disks`` ``(cx, cy, r)``, ``squares`` ``(x0, y0, x1, y1)``."""

    height: int
    width: int
    mpp: float | None = 0.25
    levels: int = 3
    tissue: list[tuple[float, float, float, float]] = field(default_factory=list)
    disks: list[tuple[float, float, float]] = field(default_factory=list)
    squares: list[tuple[float, float, float, float]] = field(default_factory=list)

    def render(self, y0: int, x0: int, h: int, w: int, downsample: float) -> np.ndarray:
        """``uint8 [h, w, 3]`` of the level with this downsample, level pixels ``[y0:y0+h, x0:x0+w]``."""
        ys = (np.arange(y0, y0 + h) + 0.5) * downsample
        xs = (np.arange(x0, x0 + w) + 0.5) * downsample
        out = np.empty((h, w, 3), np.uint8)
        out[:] = GLASS
        Y, X = ys[:, None], xs[None, :]
        for bx0, by0, bx1, by1 in self.tissue:
            m = (Y >= by0) & (Y < by1) & (X >= bx0) & (X < bx1)
            out[m] = TISSUE
        for cx, cy, r in self.disks:
            if cy + r < ys[0] or cy - r > ys[-1] + 1 or cx + r < xs[0] or cx - r > xs[-1] + 1:
                continue
            m = (Y - cy) ** 2 + (X - cx) ** 2 <= r * r
            out[m] = NUCLEUS
        for bx0, by0, bx1, by1 in self.squares:
            m = (Y >= by0) & (Y < by1) & (X >= bx0) & (X < bx1)
            out[m] = NUCLEUS
        return out


def write_slide(path: str | Path, spec: SlideSpec, *, tile: int = 256, layout: str = "subifds",
                compression: str | None = "zlib", resolution_unit: str = "CENTIMETER") -> Path:
    """Write ``spec`` as a tiled pyramidal TIFF: level 0 plus ``spec.levels - 1`` halvings, as SubIFDs
    (``layout="subifds"``) or as successive reduced pages (``"pages"``); ``spec.mpp`` goes into the
    resolution tags (``None``: no resolution, the slide has no mpp)."""
    import tifffile

    path = Path(path)
    shapes = [(spec.height, spec.width)]
    for _ in range(spec.levels - 1):
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))

    def tiles(k: int) -> Iterator[np.ndarray]:
        h, w = shapes[k]
        ds = spec.width / w
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                t = spec.render(y, x, min(tile, h - y), min(tile, w - x), ds)
                if t.shape[:2] != (tile, tile):
                    t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0)), constant_values=255)
                yield t

    def res(k: int) -> dict:
        if spec.mpp is None:
            return {}
        ds = spec.width / shapes[k][1]
        per_unit = (1e4 if resolution_unit == "CENTIMETER" else 25400.0) / (spec.mpp * ds)
        return {"resolution": (per_unit, per_unit), "resolutionunit": resolution_unit}

    common = dict(dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression=compression, metadata=None)
    with tifffile.TiffWriter(path, bigtiff=spec.height * spec.width * 3 > 2 ** 31) as tw:
        if layout == "subifds":
            tw.write(tiles(0), shape=(*shapes[0], 3), subifds=len(shapes) - 1, **res(0), **common)
            for k in range(1, len(shapes)):
                tw.write(tiles(k), shape=(*shapes[k], 3), subfiletype=1, **res(k), **common)
        elif layout == "pages":
            for k in range(len(shapes)):
                tw.write(tiles(k), shape=(*shapes[k], 3), subfiletype=1 if k else 0, **res(k), **common)
        else:
            raise ValueError(f"layout={layout!r}; use 'subifds' or 'pages'")
    return path
