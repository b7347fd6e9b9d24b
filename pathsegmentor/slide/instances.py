"""Streaming analysis of a slide mask, strip by strip with overlap: instance separation (the decoder
``segment()`` uses, :func:`pathsegmentor.inference.separation.instance_decoding`) and per-object measurements
for instance prompts, region polygons for the others.

Each strip (``core`` rows) is analysed inside a window with ``margin`` rows of context above and
below; an object is kept by the strip whose core holds its centroid, so objects cut by strip
boundaries are counted once. Region polygons are clipped to the core rows and unioned with the
open polygons of the previous strip, so a region spanning strips becomes one polygon.
Coordinates inside are working-grid *corner* coordinates (pixel ``(r, c)`` covers
``[c, c+1) x [r, r+1)``); emitted geometry and centroids are scaled to level-0 pixels.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..inference.separation import InstanceDecoding

COLUMNS = ["object_id", "prompt", "centroid_x", "centroid_y", "area_um2", "perimeter_um", "eccentricity",
           "solidity", "mean_hematoxylin", "mean_eosin"]


@dataclass
class Geometry:
    """Working grid -> level 0: ``x0 = x * sx``, ``y0 = y * sy`` (corner coordinates);
    ``mpp_x, mpp_y`` microns per working pixel."""

    sx: float
    sy: float
    mpp_x: float
    mpp_y: float

    def to_level0(self, geom):
        from shapely.affinity import scale

        return scale(geom, xfact=self.sx, yfact=self.sy, origin=(0, 0))


class Lookahead:
    """Feed strips in order; ``process(core0, core1, rows(a, b))`` runs for each strip once the
    next one (its lower context) has arrived. ``rows(a, b)`` returns the buffered rows ``[a, b)``
    clipped to what is buffered (at most ``margin`` rows either side of the core)."""

    def __init__(self, margin: int, process: Callable[[int, int, Callable[[int, int], tuple[int, np.ndarray]]], None]) -> None:
        self.margin, self.process = margin, process
        self.buf: list[tuple[int, np.ndarray]] = []

    def _rows(self, a: int, b: int) -> tuple[int, np.ndarray]:
        parts, start = [], None
        for r0, s in self.buf:
            lo, hi = max(a, r0), min(b, r0 + len(s))
            if hi > lo:
                start = lo if start is None else start
                parts.append(s[lo - r0:hi - r0])
        return (start if start is not None else a), (np.concatenate(parts) if parts else np.zeros((0, 0), bool))

    def push(self, r0: int, strip: np.ndarray) -> None:
        self.buf.append((r0, strip))
        if len(self.buf) >= 2:
            c0, cs = self.buf[-2]
            self.process(c0, c0 + len(cs), lambda a, b: self._rows(a, b))
        if len(self.buf) > 3:
            self.buf.pop(0)

    def finish(self) -> None:
        if self.buf:
            c0, cs = self.buf[-1]
            self.process(c0, c0 + len(cs), lambda a, b: self._rows(a, b))
        self.buf = []


class InstanceAnalyzer:
    """Instances + measurements (+ detection polygons) for one prompt, streamed by strips."""

    def __init__(self, prompt: str, *, geometry: Geometry, read_rgb: Callable[[int, int, int, int], np.ndarray],
                 next_id: Callable[[], int], on_object: Callable[[dict, object], None],
                 want_polygons: bool, margin: int = 64, block: int = 1024,
                 decoding: InstanceDecoding | None = None) -> None:
        self.prompt, self.g, self.read_rgb = prompt, geometry, read_rgb
        self.next_id, self.on_object, self.want_polygons = next_id, on_object, want_polygons
        self.block = block
        # the decoder segment() uses for this prompt (inference.separation.instance_decoding); None: labels are
        # given (measure() only, e.g. the viewer's export of the instances segment() decoded)
        self.decoding = decoding
        self.count = 0
        self._look = Lookahead(margin, self._process)

    def push(self, r0: int, mask: np.ndarray, maps: np.ndarray | None = None) -> None:
        """A strip of the mask ``bool [n, W]`` and, from a model with a separation head, its separation maps
        ``[n, W, C]`` (centre offsets x, y in [-1, 1], border distance in [0, 1], thick border with C = 4)."""
        if self.decoding is None:
            raise ValueError(f"instance analyzer of '{self.prompt}' has no decoder: pass decoding= (measure() only "
                             "measures given labels)")
        if maps is not None:
            self._look.push(r0, np.concatenate([mask[..., None].astype(maps.dtype), maps], axis=-1))
        else:
            self._look.push(r0, mask)

    def finish(self) -> None:
        self._look.finish()

    def _process(self, core0: int, core1: int, rows) -> None:
        m = self._look.margin
        w0, window = rows(core0 - m, core1 + m)
        if window.size == 0:
            return
        occupied = window[..., 0] > 0.5 if window.ndim == 3 else window
        if not occupied.any():
            return
        # column blocks with the same margin and centroid rule, so memory follows the block, not the slide width
        cols = np.flatnonzero(occupied.any(axis=0))
        width = window.shape[1]
        for b0 in range(int(cols[0]) // self.block * self.block, int(cols[-1]) + 1, self.block):
            b1 = min(width, b0 + self.block)
            x0, x1 = max(0, b0 - m), min(width, b1 + m)
            sub = window[:, x0:x1]
            if occupied[:, x0:x1].any():
                self._block(core0, core1, w0, x0, b0, b1, sub)

    def _block(self, core0: int, core1: int, w0: int, x0: int, b0: int, b1: int, window: np.ndarray) -> None:
        if window.ndim == 3:  # mask + separation maps
            maps = np.moveaxis(window[..., 1:], -1, 0).astype(np.float32)
            labels = self.decoding.decode(window[..., 0] > 0.5, maps)
        else:
            labels = self.decoding.decode(window, None)
        self._emit(labels, core0, core1, w0, x0, b0, b1)

    def measure(self, labels: np.ndarray) -> None:
        """Measures (and outlines) every object of a finished ``int [H, W]`` instance map (rows from 0): the
        objects a view's decoder already made, as a slide's analysis would report them."""
        self._emit(np.asarray(labels), 0, labels.shape[0], 0, 0, 0, labels.shape[1])

    def _emit(self, labels: np.ndarray, core0: int, core1: int, w0: int, x0: int, b0: int, b1: int) -> None:
        """One row (and outline) per object of ``labels`` (a window whose corner is working ``(w0, x0)``) whose
        centroid lies in rows ``[core0, core1)`` and columns ``[b0, b1)``."""
        from skimage.color import rgb2hed
        from skimage.measure import regionprops

        kept = []
        for prop in regionprops(labels):
            cy = prop.centroid[0] + 0.5 + w0  # corner coordinates of the centroid
            cx = prop.centroid[1] + 0.5 + x0
            if core0 <= cy < core1 and b0 <= cx < b1:
                kept.append((prop, cy, cx))
        if not kept:
            return
        r_lo = min(p.bbox[0] for p, _, _ in kept)
        r_hi = max(p.bbox[2] for p, _, _ in kept)
        c_lo = min(p.bbox[1] for p, _, _ in kept)
        c_hi = max(p.bbox[3] for p, _, _ in kept)
        hed = rgb2hed(self.read_rgb(w0 + r_lo, w0 + r_hi, x0 + c_lo, x0 + c_hi))
        g = self.g
        px_area, px_len = g.mpp_x * g.mpp_y, math.sqrt(g.mpp_x * g.mpp_y)
        for prop, cy, cx in kept:
            r0, c0, r1, c1 = prop.bbox
            obj = prop.image
            sub = hed[r0 - r_lo:r1 - r_lo, c0 - c_lo:c1 - c_lo]
            row = {"object_id": self.next_id(), "prompt": self.prompt,
                   "centroid_x": cx * g.sx, "centroid_y": cy * g.sy,
                   "area_um2": float(prop.area) * px_area, "perimeter_um": float(prop.perimeter) * px_len,
                   "eccentricity": float(prop.eccentricity), "solidity": float(prop.solidity),
                   "mean_hematoxylin": float(sub[..., 0][obj].mean()), "mean_eosin": float(sub[..., 1][obj].mean())}
            poly = None
            if self.want_polygons:
                from .geojson import outer_polygon

                poly = outer_polygon(obj, (w0 + r0, x0 + c0))
                poly = g.to_level0(poly) if poly is not None else None
            self.count += 1
            self.on_object(row, poly)


class RegionTracer:
    """Region polygons of one prompt's mask, streamed by strips and merged across strip seams."""

    def __init__(self, *, height: int, width: int, on_polygon: Callable[[object], None], block: int = 2048) -> None:
        self.height, self.width, self.on_polygon, self.block = height, width, on_polygon, block
        self.open: list = []
        self._look = Lookahead(1, self._process)

    def push(self, r0: int, mask: np.ndarray, maps: np.ndarray | None = None) -> None:
        """A strip of the mask ``bool [n, W]`` (``maps``: accepted like :meth:`InstanceAnalyzer.push`, unused)."""
        self._look.push(r0, mask)

    def finish(self) -> None:
        self._look.finish()
        for p in self.open:
            self.on_polygon(p)
        self.open = []

    def _process(self, core0: int, core1: int, rows) -> None:
        from shapely import box, union_all

        from .geojson import mask_polygons

        w0, window = rows(core0 - 1, core1 + 1)
        polys, joinable = [], []
        eps = 1e-9
        if window.size and window.any():
            # column blocks (1 column of context each side, clipped to the block core like the rows):
            # memory follows the block, not the slide width; seams are joined by the union below
            cols = np.flatnonzero(window.any(axis=0))
            W = window.shape[1]
            for b0 in range(int(cols[0]) // self.block * self.block, int(cols[-1]) + 1, self.block):
                b1 = min(W, b0 + self.block)
                x0, x1 = max(0, b0 - 1), min(W, b1 + 1)
                sub = window[:, x0:x1]
                if not sub.any():
                    continue
                clip = box(b0, core0, b1, core1)
                for p in mask_polygons(sub, (w0, x0)):
                    q = p.intersection(clip)
                    for g in getattr(q, "geoms", [q]):
                        if g.geom_type != "Polygon" or g.area <= 0:
                            continue
                        gx0, gy0, gx1, _ = g.bounds
                        seam = (b0 > 0 and gx0 <= b0 + eps) or (b1 < W and gx1 >= b1 - eps)
                        (joinable if seam or gy0 <= core0 + eps else polys).append(g)
        merged = []
        if self.open or joinable:
            u = union_all(self.open + joinable)
            merged = [g for g in getattr(u, "geoms", [u]) if g.geom_type == "Polygon" and not g.is_empty]
        still_open = []
        for p in merged + polys:
            if p.bounds[3] >= core1 - eps and core1 < self.height:
                still_open.append(p)
            else:
                self.on_polygon(p)
        self.open = still_open


class ObjectTable:
    """Measurements streamed to CSV; converted to parquet in batches at :meth:`close` (pyarrow)."""

    def __init__(self, csv_path: Path) -> None:
        self.csv_path = Path(csv_path)
        self._f = open(self.csv_path, "w", newline="", encoding="utf-8")
        self._w = csv.DictWriter(self._f, fieldnames=COLUMNS)
        self._w.writeheader()
        self.rows = 0

    def add(self, row: dict) -> None:
        self._w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})
        self.rows += 1

    def close(self, parquet_path: Path | None = None) -> Path | None:
        self._f.close()
        if parquet_path is None:
            return None
        try:
            import pyarrow as pa
            import pyarrow.csv as pacsv
            import pyarrow.parquet as pq
        except ImportError:
            return None
        types = {c: pa.float64() for c in COLUMNS}
        types.update(object_id=pa.int64(), prompt=pa.string())
        reader = pacsv.open_csv(self.csv_path, convert_options=pacsv.ConvertOptions(column_types=types))
        with pq.ParquetWriter(parquet_path, reader.schema) as w:
            for batch in reader:
                w.write_batch(batch)
        return parquet_path
