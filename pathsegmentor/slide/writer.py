"""Tiled pyramidal TIFF output, written strip by strip (never the whole image in memory).

Level 0 comes from a stream of row strips; while it is written, its 2x2-mean downsample is appended
to a raw temporary file, from which the next level is written (and so on), so each level is one
sequential pass. Levels are SubIFDs of the first page (as OME-TIFF/QuPath/OpenSlide-readable
pyramids are), tiles 256x256 deflate-compressed, mpp in the resolution tags (pixels per cm).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def pyramid_shapes(height: int, width: int, tile: int = 256) -> list[tuple[int, int]]:
    """Level shapes halving (rounding up) until the longer side fits in one tile."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 mean of ``[h, w]`` (odd sizes: the last row/column is repeated)."""
    h, w = a.shape
    if h % 2:
        a = np.concatenate([a, a[-1:]], 0)
    if w % 2:
        a = np.concatenate([a, a[:, -1:]], 1)
    if a.dtype == np.uint8:
        s = a[0::2, 0::2].astype(np.uint16) + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
        return ((s + 2) // 4).astype(np.uint8)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) * 0.25).astype(a.dtype)


def _raw_strips(path: Path, shape: tuple[int, int], dtype, rows: int) -> Iterator[np.ndarray]:
    h, w = shape
    dt = np.dtype(dtype)
    with open(path, "rb") as f:
        for r0 in range(0, h, rows):
            n = min(rows, h - r0)
            f.seek(r0 * w * dt.itemsize)
            yield np.fromfile(f, dt, count=n * w).reshape(n, w)


def write_pyramid(path: str | Path, strips: Iterator[np.ndarray], shape: tuple[int, int], dtype: str,
                  mpp: tuple[float, float], tmp_dir: str | Path, *, tile: int = 256,
                  compression: str = "zlib", description: str | None = None,
                  on_strip: Callable[[int, np.ndarray], None] | None = None) -> list[tuple[int, int]]:
    """Write ``strips`` (``[tile, W]`` row strips of a ``shape`` image, the last may be shorter) as a
    tiled pyramidal TIFF; ``mpp`` = (x, y) microns per pixel of level 0. ``on_strip(r0, strip)`` sees
    each level-0 strip as it passes. Returns the level shapes."""
    import tifffile

    path, tmp_dir = Path(path), Path(tmp_dir)
    shapes = pyramid_shapes(*shape, tile)
    dt = np.dtype(dtype)
    bigtiff = shape[0] * shape[1] * dt.itemsize * 1.4 > 2 ** 31
    raws = [tmp_dir / f".{path.stem}.level{k}.raw" for k in range(len(shapes))]

    def tiles(level: int, source: Iterator[np.ndarray]):
        down = open(raws[level + 1], "wb") if level + 1 < len(shapes) else None
        r0 = 0
        try:
            for strip in source:
                if level == 0 and on_strip is not None:
                    on_strip(r0, strip)
                r0 += len(strip)
                if down is not None:
                    downsample2(strip).tofile(down)
                for x in range(0, strip.shape[1], tile):
                    t = strip[:, x:x + tile]
                    if t.shape != (tile, tile):  # edge tiles are padded to full size
                        t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1])))
                    yield t
        finally:
            if down is not None:
                down.close()

    def res(k: int) -> tuple[float, float]:
        fx, fy = shape[1] / shapes[k][1], shape[0] / shapes[k][0]
        return 1e4 / (mpp[0] * fx), 1e4 / (mpp[1] * fy)

    common = dict(dtype=dt, tile=(tile, tile), compression=compression, photometric="minisblack",
                  resolutionunit="CENTIMETER", metadata=None)
    try:
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            tw.write(tiles(0, strips), shape=shapes[0], subifds=len(shapes) - 1, resolution=res(0),
                     description=description, **common)
            for k in range(1, len(shapes)):
                tw.write(tiles(k, _raw_strips(raws[k], shapes[k], dt, tile)), shape=shapes[k],
                         subfiletype=1, resolution=res(k), **common)
    finally:
        for r in raws:
            r.unlink(missing_ok=True)
    return shapes
