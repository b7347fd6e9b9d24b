"""QuPath-compatible GeoJSON, streamed feature by feature, and mask -> polygon tracing.

QuPath conventions followed (what *File > Import objects from file* reads and *Export as GeoJSON*
writes): a ``FeatureCollection``; each ``Feature`` has a UUID ``id``, a ``Polygon`` geometry in
level-0 (full-resolution) pixel units with the origin at the top-left corner of the image, and
``properties`` with ``objectType`` (``"annotation"`` or ``"detection"``), ``classification``
``{"name", "color": [r, g, b]}``, ``isLocked`` and ``measurements`` as a name -> number object.

Pixel convention: QuPath's pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``, so a pixel centre is at
``(x + 0.5, y + 0.5)``. ``skimage.measure.find_contours`` returns contours in (row, col) *centre*
coordinates (pixel ``(r, c)`` at ``(r, c)``), so the tracers below add 0.5 to both before scaling
from the working grid to level 0 (``x0 = x_work * level0_width / work_width``).
"""
from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def prompt_color(index: int) -> list[int]:
    return list(PALETTE[index % len(PALETTE)])


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def mask_polygons(mask: np.ndarray, offset_rc: tuple[float, float] = (0.0, 0.0)):
    """Polygons (with holes) of a ``bool [h, w]`` mask, in working *corner* coordinates (x, y):
    pixel ``(r, c)`` of the mask lies at ``[c + off_c, c + off_c + 1) x [r + off_r, r + off_r + 1)``.

    The mask is zero-padded so every contour closes; outer boundaries and holes are told apart by
    orientation and each hole goes to the smallest outer ring containing it.
    """
    from shapely.geometry import Point, Polygon
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, bool), 1).astype(np.float32)
    outers, holes = [], []
    for c in find_contours(padded, 0.5):
        if len(c) < 4:
            continue
        # (row, col) centre coordinates in the padded array -> corner (x, y): -1 (pad) + 0.5 (centre->corner)
        xy = np.stack([c[:, 1] - 0.5 + offset_rc[1], c[:, 0] - 0.5 + offset_rc[0]], axis=1)
        a = _ring_area(xy)
        # find_contours keeps high values on one side: outer boundaries come out with positive
        # shoelace area in (x, y-down) coordinates, hole boundaries with negative
        (outers if a > 0 else holes).append((abs(a), xy))
    polys = [[Polygon(xy), []] for _, xy in sorted(outers, key=lambda t: t[0])]
    for _, xy in holes:
        pt = Point(xy[0])
        hole = Polygon(xy)
        for entry in polys:  # smallest first
            if entry[0].area > hole.area and entry[0].contains(hole.representative_point()) and entry[0].covers(pt):
                entry[1].append(xy)
                break
    out = []
    for poly, hs in polys:
        p = Polygon(poly.exterior.coords, hs) if hs else poly
        if not p.is_valid:
            p = p.buffer(0)
        if not p.is_empty:
            out.append(p)
    return out


def outer_polygon(mask: np.ndarray, offset_rc: tuple[float, float] = (0.0, 0.0)):
    """The outline (longest contour, no holes) of a single object's ``bool`` mask as a shapely
    Polygon in corner coordinates (see :func:`mask_polygons`); None when too small to trace."""
    from shapely.geometry import Polygon
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, bool), 1).astype(np.float32)
    cs = find_contours(padded, 0.5)
    if not cs:
        return None
    c = max(cs, key=len)
    if len(c) < 4:
        return None
    xy = np.stack([c[:, 1] - 0.5 + offset_rc[1], c[:, 0] - 0.5 + offset_rc[0]], axis=1)
    p = Polygon(xy).simplify(0)  # drops collinear vertices only
    if not p.is_valid:
        p = p.buffer(0)
        if p.geom_type == "MultiPolygon":
            p = max(p.geoms, key=lambda g: g.area)
    return None if p.is_empty else p


def _clean(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, np.integer):
        return int(v)
    return v


class GeoJSONWriter:
    """Stream Features into a FeatureCollection file: the header at open, one feature per line,
    the closing bracket at :meth:`close` (a crash leaves no valid-looking partial file: the caller
    writes into a staging folder)."""

    def __init__(self, path: str | Path, *, decimals: int = 3) -> None:
        self.path = Path(path)
        self._f = open(self.path, "w", encoding="utf-8")
        self._f.write('{"type": "FeatureCollection", "features": [\n')
        self._n = 0
        self._decimals = decimals

    def _coords(self, poly) -> list:
        d = self._decimals
        rings = [poly.exterior] + list(poly.interiors)
        return [[[round(x, d), round(y, d)] for x, y in r.coords] for r in rings]

    def add(self, poly, *, name: str, color: list[int], object_type: str,
            measurements: dict[str, Any] | None = None, resolution: dict[str, Any] | None = None) -> None:
        """Add a shapely Polygon/MultiPolygon in level-0 pixel coordinates; ``resolution`` (how the prompt
        was answered) goes to the ``promptResolution`` property."""
        from shapely.geometry.polygon import orient

        if poly.geom_type == "MultiPolygon":
            geom = {"type": "MultiPolygon", "coordinates": [self._coords(orient(g)) for g in poly.geoms]}
        else:
            geom = {"type": "Polygon", "coordinates": self._coords(orient(poly))}
        feat = {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geom,
                "properties": {"objectType": object_type,
                               "classification": {"name": name, "color": [int(c) for c in color]},
                               "isLocked": False,
                               "measurements": {k: _clean(v) for k, v in (measurements or {}).items()
                                                if _clean(v) is not None}}}
        if resolution is not None:
            feat["properties"]["promptResolution"] = resolution
        self._f.write((",\n" if self._n else "") + json.dumps(feat, ensure_ascii=False, separators=(",", ":")))
        self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def close(self) -> None:
        if not self._f.closed:
            self._f.write("\n]}\n")
            self._f.close()
