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
    """Three stored planes (offsets as ``(x + 1) / 2``) -> ``float16 [rows, W, 3]`` maps in their ranges."""
    scale = 255.0 if dtype == "uint8" else 1.0
    m = np.stack([c.astype(np.float32) / scale for c in chans], axis=-1)
    m[..., :2] = m[..., :2] * 2.0 - 1.0
    return m.astype(np.float16)


def _finish(model, reader, grid: WorkGrid, plan: BandPlan, store: PartStore, prompts: list[str], out: Path,
            partial: Path, tmap: TissueMap, thumb: np.ndarray, tmask: np.ndarray, *, dtype: str, mthr: float,
            geojson: bool, inst_flags: list[bool], sep_rows: list[int], state: dict[str, Any]) -> SlideResult:
    from PIL import Image

    from .geojson import GeoJSONWriter, prompt_color
    from .instances import Geometry, InstanceAnalyzer, ObjectTable, RegionTracer
    from .summary import PromptStats, slide_summary
    from .writer import write_pyramid

    final = partial / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    slugs = _slugs(prompts)
    geo = Geometry(grid.sx0, grid.sy0, grid.mpp_x, grid.mpp_y)
    stem = re.sub(r"\.(ome\.)?(tiff?|svs|ndpi|scn|mrxs|bif|vms|vmu|svslide)$", "", reader.path.name, flags=re.I)
    gj = GeoJSONWriter(final / f"{_slug(stem)}.geojson") if geojson else None
    table = ObjectTable(final / "objects.csv") if any(inst_flags) else None
    thr_u8 = mthr * 255.0
    counter = [0]

    def next_id() -> int:
        counter[0] += 1
        return counter[0]

    presence = np.zeros(len(prompts), np.float32)
    tiles = np.zeros(2, np.int64)
    for b in range(len(plan)):
        d = store.load(b, ["presence", "tiles"])
        presence = np.maximum(presence, d["presence"])
        tiles += d["tiles"]
    tissue_px = [0]
    stats: list[PromptStats] = []
    masks: dict[str, Path] = {}
    h_px = max(1.0, 0.75 / grid.mpp_x)  # seeds must stand ~0.75 µm above the neck between nuclei
    min_area = max(4, round(3.0 / (grid.mpp_x * grid.mpp_y)))  # ~3 µm²
    max_cell_um2 = float(getattr(model.config.inference, "max_cell_component_um2", 0.0) or 0.0)
    try:
        for p, prompt in enumerate(prompts):
            st = PromptStats(prompt, inst_flags[p], presence_max=float(presence[p]))
            resolution = _geojson_resolution(state, p)
            color = prompt_color(p)
            analyzer = None
            if inst_flags[p]:
                def on_object(row, poly, prompt=prompt, color=color):
                    table.add(row)
                    if gj is not None and poly is not None:
                        gj.add(poly, name=prompt, color=color, object_type="detection",
                               measurements={k: v for k, v in row.items() if k not in ("prompt",)},
                               resolution=resolution)

                analyzer = InstanceAnalyzer(prompt, geometry=geo, read_rgb=grid.read, next_id=next_id,
                                            on_object=on_object, want_polygons=gj is not None,
                                            margin=64, h=h_px, min_area=min_area,
                                            decoder=getattr(model.config.inference, "instances", "auto"),
                                            max_component_px=max_cell_um2 / (grid.mpp_x * grid.mpp_y))
            elif gj is not None:
                def on_polygon(poly, prompt=prompt, color=color, st=st):
                    area_um2 = poly.area * grid.mpp_x * grid.mpp_y
                    poly0 = geo.to_level0(poly.simplify(0.25, preserve_topology=True))
                    st.regions += 1
                    gj.add(poly0, name=prompt, color=color, object_type="annotation",
                           measurements={"area_um2": area_um2}, resolution=resolution)

                analyzer = RegionTracer(height=grid.height, width=grid.width, on_polygon=on_polygon)

            def on_strip(r0, strip, st=st, analyzer=analyzer, first=(p == 0)):
                mask = strip > (thr_u8 if dtype == "uint8" else mthr)
                tis = tmap.rows(r0, r0 + len(strip))
                st.mask_pixels += int(mask.sum())
                st.mask_in_tissue_pixels += int(np.count_nonzero(mask & tis))
                if first:
                    tissue_px[0] += int(tis.sum())
                if analyzer is not None:
                    if map_strips is not None:
                        analyzer.push(r0, mask, next(map_strips))
                    else:
                        analyzer.push(r0, mask)

            map_strips = None
            if inst_flags[p] and p in sep_rows:  # the separation maps, strip by strip beside the mask
                k = len(prompts) + 3 * sep_rows.index(p)
                planes = [(s for _, s in rechunk(merge_rows(plan, store.load, k + c, dtype), 256)) for c in range(3)]
                map_strips = (_maps_from_planes(chans, dtype) for chans in zip(*planes))
            strips = (s for _, s in rechunk(merge_rows(plan, store.load, p, dtype), 256))
            desc = json.dumps({"pathsegmentor": {"prompt": prompt, "dtype": dtype, "model": model.name,
                                                 "slide": reader.path.name, "level": grid.level.index,
                                                 "level0_scale": [grid.sx0, grid.sy0]}})
            target = final / f"{slugs[p]}.tif"
            write_pyramid(target, strips, (grid.height, grid.width), dtype, (grid.mpp_x, grid.mpp_y), partial,
                          description=desc, on_strip=on_strip)
            if analyzer is not None:
                analyzer.finish()
            if inst_flags[p]:
                st.objects = analyzer.count
            masks[prompt] = out / target.name
            stats.append(st)
    finally:
        if gj is not None:
            gj.close()
    parquet = None
    if table is not None:
        parquet = table.close(final / "objects.parquet")
    Image.fromarray((tmask * 255).astype(np.uint8)).save(final / "tissue.png")
    processes = []
    for f in sorted(partial.glob("progress-rank*.json")):
        try:
            d = json.loads(f.read_text())
            processes.append({"rank": d["rank"], "world": d["world"], "bands_this_run": len(d["bands_done"])})
        except (OSError, json.JSONDecodeError, KeyError):
            pass
    info = {"slide": str(reader.path), "model": model.name, "prompts": prompts, "processes": processes,
            "prompt_resolution": state.get("prompt_resolution", []), "refused_prompts": state.get("refused_prompts", []),
            "level": grid.level.index, "levels": [lv.describe() for lv in reader.levels],
            "slide_mpp": reader.mpp, "mpp_source": reader.mpp_source, "backend": reader.backend,
            "backend_reason": reader.backend_reason,
            **({"colour": reader.colour} if hasattr(reader, "colour") else {}),
            **({"mpp_estimate": state["mpp_estimate"]} if "mpp_estimate" in state else {}),
            "model_mpp": float(model.config.preprocess.mpp), "work_mpp": [grid.mpp_x, grid.mpp_y],
            "work_shape": [grid.height, grid.width], "level0_shape": list(reader.dimensions),
            "level0_per_work_pixel": [grid.sx0, grid.sy0], "tile": plan.tile, "overlap": plan.overlap,
            "tiles": {"total": plan.num_tiles, "predicted": int(tiles[0]), "skipped_background": int(tiles[1])},
            "mask_threshold": mthr, "dtype": dtype,
            "outputs": {"masks": {p: m.name for p, m in masks.items()},
                        "objects": "objects.csv" if table is not None else None,
                        "geojson": gj.path.name if gj is not None else None}}
    summary = slide_summary(stats=stats, tissue_pixels=tissue_px[0], work_pixels=grid.height * grid.width,
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

