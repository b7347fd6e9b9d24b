"""Row bands over the working grid: which tiles a band predicts, which of its rows it alone owns,
and a streaming merger that turns band part files back into finished rows in order.

A band is a run of tile rows of :func:`pathsegmentor.inference.tiling.tile_grid` (one by default). Its rows
``[lo, hi)`` split into ``top [lo, a)`` (also covered by earlier bands), ``mid [a, c)`` (covered by
this band only: final, stored in the output dtype) and ``bottom [c, hi)`` (also covered by later
bands). Shared rows are stored as blend sums and weights (float32) and added up by the merger, so
bands can be predicted in any order, by any process, and the stitched result is exactly that of one
:class:`~pathsegmentor.inference.tiling.BlendAccumulator` over the whole slide, while memory holds one band.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..inference.tiling import Tile, tile_grid


@dataclass(frozen=True)
class Band:
    index: int
    rows: tuple[int, ...]  # tile-row start ys
    lo: int
    hi: int
    a: int
    c: int


class BandPlan:
    """Tiles of the ``height x width`` working grid (``tile_grid(height, width, tile, overlap)``) grouped
    into bands of ``rows_per_band`` tile rows."""

    def __init__(self, height: int, width: int, tile: int, overlap: int, rows_per_band: int = 1) -> None:
        if rows_per_band < 1:
            raise ValueError(f"rows_per_band must be >= 1, got {rows_per_band}")
        self.height, self.width, self.tile, self.overlap = height, width, tile, overlap
        # the same starts as tile_grid (a grid one pixel wide/high gives one axis of it)
        self.ys = [t.y0 for t in tile_grid(height, 1, tile, overlap)]
        self.xs = [t.x0 for t in tile_grid(1, width, tile, overlap)]
        groups = [tuple(self.ys[i:i + rows_per_band]) for i in range(0, len(self.ys), rows_per_band)]
        spans = [(g[0], min(g[-1] + tile, height)) for g in groups]
        bands = []
        for i, (g, (lo, hi)) in enumerate(zip(groups, spans)):
            prev_hi = max((h for _, h in spans[:i]), default=lo)
            next_lo = min((l for l, _ in spans[i + 1:]), default=hi)
            a = min(max(prev_hi, lo), hi)
            c = max(min(next_lo, hi), a)
            bands.append(Band(i, g, lo, hi, a, c))
        self.bands = bands

    def __len__(self) -> int:
        return len(self.bands)

    def tiles(self, band: Band) -> list[Tile]:
        return [Tile(y, x, min(y + self.tile, self.height), min(x + self.tile, self.width))
                for y in band.rows for x in self.xs]

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def final_after(self, i: int) -> int:
        """Rows below this are finished once bands ``0..i`` are merged."""
        return self.bands[i + 1].lo if i + 1 < len(self.bands) else self.height


def to_output(probs: np.ndarray, dtype: str) -> np.ndarray:
    """float probabilities -> stored values: ``uint8`` round(p * 255), or ``float32``."""
    if dtype == "uint8":
        return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
    return np.clip(probs, 0.0, 1.0).astype(np.float32)


def band_arrays(plan: BandPlan, band: Band, sums: np.ndarray, weight: np.ndarray, dtype: str,
                x_offset: int = 0) -> dict[str, np.ndarray]:
    """Split a band canvas (``sums [P, hi-lo, w]``, ``weight [hi-lo, w]`` starting at column
    ``x_offset``) into the stored parts, cropped to the columns that were predicted (``span``;
    all zero elsewhere)."""
    lo = band.lo
    cols = np.flatnonzero(weight.any(axis=0))
    x0, x1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 0)
    sums, weight = sums[:, :, x0:x1], weight[:, x0:x1]
    span = [x0 + x_offset, x1 + x_offset] if cols.size else [0, 0]
    out: dict[str, np.ndarray] = {"top_w": weight[:band.a - lo], "bot_w": weight[band.c - lo:],
                                  "span": np.array(span, np.int64)}
    mid_w = np.maximum(weight[band.a - lo:band.c - lo], 1e-12)
    for p in range(sums.shape[0]):
        out[f"top_{p}"] = sums[p, :band.a - lo]
        out[f"bot_{p}"] = sums[p, band.c - lo:]
        mid = sums[p, band.a - lo:band.c - lo] / mid_w
        out[f"mid_{p}"] = to_output(mid, dtype)
    return out


class _RowSums:
    """Blend sums and weights for a moving window of rows ``[base, base + n)``."""

    def __init__(self, width: int) -> None:
        self.base, self.width = 0, width
        self.sum = np.zeros((0, width), np.float32)
        self.w = np.zeros((0, width), np.float32)

    def add(self, r0: int, s: np.ndarray, w: np.ndarray) -> None:
        if not len(s):
            return
        if len(self.sum) == 0:
            self.base = r0
        end = r0 + len(s)
        need = end - self.base
        if need > len(self.sum):
            pad = need - len(self.sum)
            self.sum = np.concatenate([self.sum, np.zeros((pad, self.width), np.float32)])
            self.w = np.concatenate([self.w, np.zeros((pad, self.width), np.float32)])
        if r0 < self.base:
            raise RuntimeError(f"rows {r0}.. were already emitted (window starts at {self.base})")
        self.sum[r0 - self.base:end - self.base] += s
        self.w[r0 - self.base:end - self.base] += w

    def pop(self, r0: int, r1: int) -> np.ndarray:
        """Probabilities of rows ``[r0, r1)`` (0 where nothing was predicted); drops rows < r1."""
        n = r1 - r0
        out = np.zeros((n, self.width), np.float32)
        if n <= 0:
            return out
        a, b = max(r0, self.base), min(r1, self.base + len(self.sum))
        if b > a:
            s, w = self.sum[a - self.base:b - self.base], self.w[a - self.base:b - self.base]
            out[a - r0:b - r0] = np.where(w > 0, s / np.maximum(w, 1e-12), 0.0)
        keep = max(0, r1 - self.base)
        self.sum, self.w = self.sum[keep:], self.w[keep:]
        self.base = max(self.base, r1)
        return out


def merge_rows(plan: BandPlan, load, prompt: int, dtype: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(r0, rows [n, W])`` in the output dtype, in row order, covering ``[0, height)``.

    ``load(band_index, keys) -> dict`` returns the stored arrays of a band (see :func:`band_arrays`).
    Holds at most the shared strips of neighbouring bands and one band's own rows.
    """
    acc = _RowSums(plan.width)
    emitted = 0
    for band in plan.bands:
        d = load(band.index, [f"top_{prompt}", "top_w", f"mid_{prompt}", f"bot_{prompt}", "bot_w"])
        acc.add(band.lo, d[f"top_{prompt}"], d["top_w"])
        acc.add(band.c, d[f"bot_{prompt}"], d["bot_w"])
        target = plan.final_after(band.index)
        mid = d[f"mid_{prompt}"]
        if band.a > emitted and min(band.a, target) > emitted:
            r1 = min(band.a, target)
            yield emitted, to_output(acc.pop(emitted, r1), dtype)
            emitted = r1
        if band.c > band.a:  # own rows are final
            if emitted != band.a:
                raise RuntimeError(f"band {band.index}: rows out of order ({emitted} != {band.a})")
            acc.pop(band.a, band.c)  # nothing stored there; moves the window on
            yield band.a, mid
            emitted = band.c
        if target > emitted:
            yield emitted, to_output(acc.pop(emitted, target), dtype)
            emitted = target
    if emitted != plan.height:
        raise RuntimeError(f"merged {emitted} of {plan.height} rows")


def rechunk(rows: Iterator[tuple[int, np.ndarray]], size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Regroup ``(r0, rows)`` pieces into strips of exactly ``size`` rows (the last may be shorter)."""
    buf: list[np.ndarray] = []
    have, start = 0, 0
    for r0, a in rows:
        if not buf:
            start = r0
        buf.append(a)
        have += len(a)
        while have >= size:
            cat = np.concatenate(buf) if len(buf) > 1 else buf[0]
            yield start, cat[:size]
            rest = cat[size:]
            start += size
            buf, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield start, np.concatenate(buf) if len(buf) > 1 else buf[0]


class PartStore:
    """Band part files ``band_XXXXXX.npz`` in a folder, written atomically (tmp + rename)."""

    def path(self, index: int) -> Path:
        return self.folder / f"band_{index:06d}.npz"

    def done(self, index: int) -> bool:
        return self.path(index).exists()

    def __init__(self, folder: Path, width: int | None = None) -> None:
        self.folder = Path(folder)
        self.width = width

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        """An ``.npz`` (readable by ``np.load``) deflated at level 1: fast on dense predictions,
        still tiny on background."""
        import os
        import zipfile

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".band_{index:06d}.{os.getpid()}.tmp.npz"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for k, a in arrays.items():
                with zf.open(f"{k}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(a), allow_pickle=False)
        os.replace(tmp, self.path(index))

    def load(self, index: int, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Stored arrays; row arrays come back full width (zeros outside the stored column span)."""
        with np.load(self.path(index)) as z:
            d = {k: z[k] for k in (keys if keys is not None else z.files)}
            span = z["span"] if "span" in z.files else None
        if span is None or self.width is None:
            return d
        x0, x1 = int(span[0]), int(span[1])
        if (x0, x1) == (0, self.width):
            return d
        for k, a in d.items():
            if a.ndim == 2 and k != "span":
                full = np.zeros((a.shape[0], self.width), a.dtype)
                full[:, x0:x1] = a
                d[k] = full
        return d
