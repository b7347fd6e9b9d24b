"""The end of a slide run (main process): one streaming pass per prompt over the saved bands that writes
the pyramidal TIFF, the instances/measurements and the GeoJSON, then the tissue mask and summary, all
staged in ``out/.partial/final`` and moved into ``out`` only once complete (the files are listed in
:mod:`pathsegmentor.slide.infer`); :class:`SlideResult` describes what was written."""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bands import BandPlan, PartStore, merge_rows, rechunk
from .grid import WorkGrid
from .resume import _atomic_json
from .tissue import TissueMap


@dataclass
class SlideResult:
    """What :func:`segment_slide` wrote (paths in ``out``) and the slide summary."""

    out: Path
    masks: dict[str, Path]
    summary: dict[str, Any]
    objects_csv: Path | None = None
    objects_parquet: Path | None = None
    geojson: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "prompt"


def _slugs(prompts: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        s = _slug(p)
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return out


def _geojson_resolution(state: dict[str, Any], index: int) -> dict[str, Any] | None:
    """The ``promptResolution`` property of prompt ``index``'s features (QuPath shows it per object)."""
    rows = state.get("prompt_resolution") or []
    if index >= len(rows):
        return None
    r = rows[index]
    return {"prompt": r["prompt"], "concept": r["concept"], "answeredAs": r["answered_as"],
            "relation": r["relation"], "similarity": r["similarity"]}


def _maps_from_planes(chans: tuple[np.ndarray, ...], dtype: str) -> np.ndarray:
    """C stored planes (offsets as ``(x + 1) / 2``) -> ``float16 [rows, W, C]`` maps in their ranges."""
    scale = 255.0 if dtype == "uint8" else 1.0
    m = np.stack([c.astype(np.float32) / scale for c in chans], axis=-1)
    m[..., :2] = m[..., :2] * 2.0 - 1.0
    return m.astype(np.float16)


@dataclass
class _Run:
    """What every prompt's pass of :func:`_finish` shares: the run's grid, bands, thresholds and writers."""

    model: Any
    reader: Any
    grid: WorkGrid
    plan: BandPlan
    store: PartStore
    prompts: list[str]
    partial: Path
    final: Path
    tmap: TissueMap
    dtype: str
    mthr: float
    instances: Any  # run_plan._InstancePlan
    state: dict[str, Any]
    gj: Any = None
    table: Any = None
    tissue_px: int = 0
    counter: int = 0

    def next_id(self) -> int:
        self.counter += 1
        return self.counter

    def rows(self, plane: int):
        """The stored plane's rows in 256-row strips (a fresh pass over the bands each call)."""
        return (s for _, s in rechunk(merge_rows(self.plan, self.store.load, plane, self.dtype), 256))


def _finish(model, reader, grid: WorkGrid, plan: BandPlan, store: PartStore, prompts: list[str], out: Path,
            partial: Path, tmap: TissueMap, thumb: np.ndarray, tmask: np.ndarray, *, dtype: str, mthr: float,
            geojson: bool, instances, state: dict[str, Any]) -> SlideResult:
    from PIL import Image

    from .geojson import GeoJSONWriter
    from .instances import ObjectTable
    from .summary import slide_summary

    final = partial / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    slugs = _slugs(prompts)
    stem = re.sub(r"\.(ome\.)?(tiff?|svs|ndpi|scn|mrxs|bif|vms|vmu|svslide)$", "", reader.path.name, flags=re.I)
    run = _Run(model, reader, grid, plan, store, prompts, partial, final, tmap, dtype, mthr, instances, state,
               gj=GeoJSONWriter(final / f"{_slug(stem)}.geojson") if geojson else None,
               table=ObjectTable(final / "objects.csv") if any(d is not None for d in instances.decoding) else None)
    gj, table = run.gj, run.table
    presence = np.zeros(len(prompts), np.float32)
    tiles = np.zeros(2, np.int64)
    for b in range(len(plan)):
        d = store.load(b, ["presence", "tiles"])
        presence = np.maximum(presence, d["presence"])
        tiles += d["tiles"]
    stats = []
    masks: dict[str, Path] = {}
    try:
        for p, prompt in enumerate(prompts):
            st, target = _write_prompt(run, p, float(presence[p]), slugs[p])
            masks[prompt] = out / target.name
            stats.append(st)
    finally:
        if gj is not None:
            gj.close()
    parquet = table.close(final / "objects.parquet") if table is not None else None
    Image.fromarray((tmask * 255).astype(np.uint8)).save(final / "tissue.png")
    info = _info(run, masks, tiles)
    summary = slide_summary(stats=stats, tissue_pixels=run.tissue_px, work_pixels=grid.height * grid.width,
                            pixel_area_um2=grid.mpp_x * grid.mpp_y, info=info)
    _atomic_json(final / "summary.json", summary)
    # all outputs complete: move them into place, then drop the staging folder
    out.mkdir(parents=True, exist_ok=True)
    for f in sorted(final.iterdir()):
        os.replace(f, out / f.name)
    shutil.rmtree(partial, ignore_errors=True)
    return SlideResult(out=out, masks=masks, summary=summary,
                       objects_csv=(out / "objects.csv") if table is not None else None,
                       objects_parquet=(out / parquet.name) if parquet is not None else None,
                       geojson=(out / gj.path.name) if gj is not None else None)


def _write_prompt(run: _Run, p: int, presence_max: float, slug: str):
    """Prompt ``p``'s pass over the bands: its pyramidal TIFF (nucleus/cell masks without the parts over
    ``inference.max_cell_component_um2``, as ``segment()`` drops them), its objects or regions, its stats.
    Returns (:class:`~.summary.PromptStats`, the TIFF's staged path)."""
    from .oversized import drop_oversized_strips
    from .summary import PromptStats
    from .writer import write_pyramid

    grid, dtype, prompt = run.grid, run.dtype, run.prompts[p]
    decoding = run.instances.decoding[p]
    st = PromptStats(prompt, decoding is not None, presence_max=presence_max)
    analyzer = _analyzer(run, p, st)
    thr = run.mthr * 255.0 if dtype == "uint8" else run.mthr
    map_strips = None
    if p in run.instances.sep_rows:  # the separation maps, strip by strip beside the mask
        C = run.instances.channels
        k = len(run.prompts) + C * run.instances.sep_rows.index(p)
        map_strips = (_maps_from_planes(chans, dtype) for chans in zip(*[run.rows(k + c) for c in range(C)]))

    def on_strip(r0: int, strip: np.ndarray) -> None:
        mask = strip > thr
        tis = run.tmap.rows(r0, r0 + len(strip))
        st.mask_pixels += int(mask.sum())
        st.mask_in_tissue_pixels += int(np.count_nonzero(mask & tis))
        if p == 0:
            run.tissue_px += int(tis.sum())
        if analyzer is not None:
            analyzer.push(r0, mask, next(map_strips) if map_strips is not None else None)

    max_um2 = float(run.model.settings.max_cell_component_um2)
    max_px = max_um2 / (grid.mpp_x * grid.mpp_y) if run.instances.size_limited[p] else 0.0
    strips = drop_oversized_strips(lambda: run.rows(p), thr, max_px)
    desc = json.dumps({"pathsegmentor": {"prompt": prompt, "dtype": dtype, "model": run.model.name,
                                         "slide": run.reader.path.name, "level": grid.level.index,
                                         "level0_scale": [grid.sx0, grid.sy0]}})
    target = run.final / f"{slug}.tif"
    write_pyramid(target, strips, (grid.height, grid.width), dtype, (grid.mpp_x, grid.mpp_y), run.partial,
                  description=desc, on_strip=on_strip)
    if analyzer is not None:
        analyzer.finish()
    if decoding is not None:
        st.objects = analyzer.count
    return st, target


def _analyzer(run: _Run, p: int, st):
    """Prompt ``p``'s strip consumer: an :class:`~.instances.InstanceAnalyzer` with ``segment()``'s decoder for an
    instance prompt, a :class:`~.instances.RegionTracer` for a region prompt with GeoJSON, else None."""
    from .geojson import prompt_color
    from .instances import Geometry, InstanceAnalyzer, RegionTracer

    grid, gj, prompt = run.grid, run.gj, run.prompts[p]
    geo = Geometry(grid.sx0, grid.sy0, grid.mpp_x, grid.mpp_y)
    resolution = _geojson_resolution(run.state, p)
    color = prompt_color(p)
    if run.instances.decoding[p] is not None:
        def on_object(row, poly):
            run.table.add(row)
            if gj is not None and poly is not None:
                gj.add(poly, name=prompt, color=color, object_type="detection",
                       measurements={k: v for k, v in row.items() if k not in ("prompt",)}, resolution=resolution)

        return InstanceAnalyzer(prompt, geometry=geo, read_rgb=grid.read, next_id=run.next_id, on_object=on_object,
                                want_polygons=gj is not None, margin=64, decoding=run.instances.decoding[p])
    if gj is None:
        return None

    def on_polygon(poly):
        area_um2 = poly.area * grid.mpp_x * grid.mpp_y
        poly0 = geo.to_level0(poly.simplify(0.25, preserve_topology=True))
        st.regions += 1
        gj.add(poly0, name=prompt, color=color, object_type="annotation", measurements={"area_um2": area_um2},
               resolution=resolution)

    return RegionTracer(height=grid.height, width=grid.width, on_polygon=on_polygon)


def _info(run: _Run, masks: dict[str, Path], tiles: np.ndarray) -> dict[str, Any]:
    """The run settings and provenance part of ``summary.json``."""
    reader, grid, plan, state = run.reader, run.grid, run.plan, run.state
    processes = []
    for f in sorted(run.partial.glob("progress-rank*.json")):
        try:
            d = json.loads(f.read_text())
            processes.append({"rank": d["rank"], "world": d["world"], "bands_this_run": len(d["bands_done"])})
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    return {"slide": str(reader.path), "model": run.model.name, "prompts": run.prompts, "processes": processes,
            "prompt_resolution": state.get("prompt_resolution", []),
            "refused_prompts": state.get("refused_prompts", []),
            "level": grid.level.index, "levels": [lv.describe() for lv in reader.levels],
            "slide_mpp": reader.mpp, "mpp_source": reader.mpp_source, "backend": reader.backend,
            "backend_reason": reader.backend_reason,
            **({"colour": reader.colour} if hasattr(reader, "colour") else {}),
            **({"mpp_estimate": state["mpp_estimate"]} if "mpp_estimate" in state else {}),
            "model_mpp": float(run.model.config.preprocess.mpp), "work_mpp": [grid.mpp_x, grid.mpp_y],
            "work_shape": [grid.height, grid.width], "level0_shape": list(reader.dimensions),
            "level0_per_work_pixel": [grid.sx0, grid.sy0], "tile": plan.tile, "overlap": plan.overlap,
            "tiles": {"total": plan.num_tiles, "predicted": int(tiles[0]), "skipped_background": int(tiles[1])},
            "mask_threshold": run.mthr, "presence_threshold": state.get("presence_threshold"), "dtype": run.dtype,
            "outputs": {"masks": {p: m.name for p, m in masks.items()},
                        "objects": "objects.csv" if run.table is not None else None,
                        "geojson": run.gj.path.name if run.gj is not None else None}}
