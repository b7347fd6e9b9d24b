"""Exports of a segmented view with the writers the CLI uses: QuPath GeoJSON
(:class:`~pathsegmentor.slide.geojson.GeoJSONWriter`; detections with measurements for cell/nucleus
prompts, annotations for regions), the per-object measurements CSV
(:class:`~pathsegmentor.slide.instances.ObjectTable` fed by
:class:`~pathsegmentor.slide.instances.InstanceAnalyzer`) and a 0/255 mask PNG. Coordinates are level-0
pixels of the opened image; measurements use its mpp (the working pixel size when it is unknown)."""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np

from ..slide.geojson import GeoJSONWriter, mask_polygons, prompt_color
from ..slide.instances import Geometry, InstanceAnalyzer, ObjectTable
from .files import ServeError
from .view import ViewResult


def _objects(view: ViewResult, index: int) -> list[tuple[dict, object]]:
    """(measurement row, level-0 outline) of each instance of prompt ``index`` (its ids from 1)."""
    from shapely.affinity import translate

    mpp = (view.image.reader.mpp or 1.0) * view.scale
    geo = Geometry(view.scale, view.scale, mpp, mpp)
    rgb = view.rgb
    found: list[tuple[dict, object]] = []
    counter = [0]

    def next_id() -> int:
        counter[0] += 1
        return counter[0]

    def on_object(row: dict, poly) -> None:
        row["centroid_x"] += view.region.x
        row["centroid_y"] += view.region.y
        found.append((row, translate(poly, view.region.x, view.region.y) if poly is not None else None))

    analyzer = InstanceAnalyzer(view.result.prompts[index], geometry=geo,
                                read_rgb=lambda y0, y1, x0, x1: rgb[y0:y1, x0:x1], next_id=next_id,
                                on_object=on_object, want_polygons=True)
    analyzer.measure(view.labels[index])  # the objects the view shows and counts, not a second separation
    return found


def geojson_bytes(view: ViewResult) -> bytes:
    """A QuPath FeatureCollection of every answered prompt's objects or regions."""
    res = view.result
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "view.geojson"
        gj = GeoJSONWriter(path)
        try:
            for i, prompt in enumerate(res.prompts):
                color = prompt_color(i)
                resolution = res.resolutions[i].to_dict() if res.resolutions else None
                if view.labels[i] is not None:
                    for row, poly in _objects(view, i):
                        if poly is not None:
                            gj.add(poly, name=prompt, color=color, object_type="detection", resolution=resolution,
                                   measurements={k: v for k, v in row.items() if k != "prompt"})
                else:
                    area = ((view.image.reader.mpp or 1.0) * view.scale) ** 2
                    for poly in mask_polygons(res.masks[i]):
                        gj.add(view.to_level0(poly.simplify(0.25, preserve_topology=True)), name=prompt,
                               color=color, object_type="annotation", resolution=resolution,
                               measurements={"area_um2": poly.area * area})
        finally:
            gj.close()
        return path.read_bytes()


def objects_csv_bytes(view: ViewResult) -> bytes:
    """One row per instance of the cell/nucleus prompts (columns of the slide objects table)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "objects.csv"
        table = ObjectTable(path)
        n = 0
        for i in range(len(view.result.prompts)):
            if view.labels[i] is None:
                continue
            for row, _ in _objects(view, i):
                n += 1
                row["object_id"] = n
                table.add(row)
        table.close()
        return path.read_bytes()


def mask_png_bytes(view: ViewResult, index: int) -> bytes:
    """Prompt ``index``'s mask as a 0/255 PNG at the working resolution (``scale`` level-0 px per pixel)."""
    from PIL import Image

    n = len(view.result.prompts)
    if not 0 <= index < n:
        raise ServeError(404, f"prompt index {index} does not exist; this result has {n} prompt(s) (0..{n - 1}).")
    buf = io.BytesIO()
    Image.fromarray(view.result.masks[index].astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()
