"""Whole-slide inference: level choice, tissue skipping, banded tiled prediction with resume and
multi-process splitting, then one streaming pass per prompt that writes the pyramidal TIFF, the
instances/measurements, the GeoJSON and the summary.

Output folder (``out``)::

    <prompt-slug>.tif     tiled pyramidal TIFF per prompt, probabilities (uint8 0-255 or float32)
                          on the working grid, mpp in the resolution tags
    objects.csv/.parquet  one row per instance (cell/nucleus prompts)
    <slide>.geojson       QuPath FeatureCollection (with ``geojson=True``)
    tissue.png            the thumbnail tissue mask
    summary.json          slide summary (areas, densities, tumour-stroma ratio, run settings)

While running, everything lives in ``out/.partial`` (state, band part files, staged outputs); the
outputs are moved into ``out`` only when all of them are complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..tiling import blend_weights
from .bands import BandPlan, PartStore, band_arrays, merge_rows, rechunk
from .reader import Level, SlideError, SlideReader, choose_level, open_slide, require_mpp
from .tissue import TissueMap, tissue_mask

STATE_VERSION = 1
PARTIAL = ".partial"


# ---------------------------------------------------------------------------------------------- grid
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


# ---------------------------------------------------------------------------------------------- processes
class _Processes:
    """Rank/world/barrier: Accelerate's state when launched multi-process, trivial otherwise."""

    def __init__(self) -> None:
        self.rank, self.world, self.state = 0, 1, None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())
            self.rank, self.world = self.state.process_index, self.state.num_processes

    @property
    def device(self):
        return self.state.device if self.state is not None else None

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def bands_for_rank(n_bands: int, rank: int, world: int) -> list[int]:
    """Bands a process predicts: interleaved (``b % world == rank``) so progress is even."""
    return [b for b in range(n_bands) if b % world == rank]


# ---------------------------------------------------------------------------------------------- options
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


def _model_fingerprint(model) -> str:
    import torch

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(name.encode())
            if p.numel():
                h.update(np.float64(p.double().sum().item()).tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- out dir
def _check_out(out: Path, state: dict[str, Any], resume: bool) -> str:
    """Decide what to do with ``out``: 'fresh' or 'resume'; raise SlideError for anything else."""
    partial = out / PARTIAL
    if out.exists() and not out.is_dir():
        raise SlideError(f"--out '{out}' exists and is not a directory; choose a directory path.")
    if not out.exists():
        return "fresh"
    entries = [e.name for e in out.iterdir()]
    state_file = partial / "state.json"
    if state_file.exists():
        try:
            old = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if not resume:
            raise SlideError(f"'{out}' holds an interrupted slide run; pass --resume to continue it "
                             f"(segment_slide(..., resume=True)), or choose another --out / delete '{out}'.")
        if old is None or old.get("version") != STATE_VERSION:
            raise SlideError(f"'{state_file}' is unreadable or from another version; delete '{out}' and rerun.")
        diff = sorted(k for k in set(old) | set(state) if old.get(k) != state.get(k))
        if diff:
            details = "; ".join(f"{k}: was {old.get(k)!r}, now {state.get(k)!r}" for k in diff)
            raise SlideError(f"--resume: '{out}' holds a run with other settings ({details}). Rerun with the "
                             f"same settings, or choose another --out.")
        others = [e for e in entries if e != PARTIAL]
        if others:
            raise SlideError(f"'{out}' holds an interrupted run and other files ({others[:5]}); move them away.")
        return "resume"
    if not entries or entries == [PARTIAL]:  # empty, or a staging folder that never got its state
        return "fresh"
    if (out / "summary.json").exists():
        try:
            ours = json.loads((out / "summary.json").read_text()).get("pathsegmentor_slide")
        except (OSError, json.JSONDecodeError, AttributeError):
            ours = None
        if ours:
            raise SlideError(f"'{out}' already holds a finished slide run; choose another --out (or delete it).")
    raise SlideError(f"--out '{out}' is not empty and is not a pathsegmentor slide run ({sorted(entries)[:5]}); "
                     f"choose an empty or new directory.")


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- main
def segment_slide(model, path: str | Path, prompts: str | Sequence[str], out: str | Path, *,
                  mpp: float | None = None, level: int | None = None, tile: int | None = None,
                  overlap: int | None = None, geojson: bool = False, instances: bool | None = None,
                  resume: bool = False, dtype: str = "uint8", tissue: bool = True, rows_per_band: int = 1,
                  mask_threshold: float | None = None, hires: bool | None = None, progress: bool = True,
                  on_band: Callable[[int, int], None] | None = None) -> SlideResult | None:
    """Segment a whole-slide image, streaming, into ``out`` (see the module docstring for the files).

    Args:
        model: a :class:`~pathsegmentor.model.PathSegmentor` (or anything with its ``config``,
            ``encode_text`` and ``_predict_window``).
        path: the slide (pyramidal TIFF, SVS, OME-TIFF, NDPI; more with openslide-python).
        prompts: a phrase or list of phrases.
        mpp: level-0 microns per pixel, overriding (or supplying) the slide's metadata.
        level: pyramid level to read (default: the level closest to the model's mpp, not coarser).
        tile / overlap: window and overlap in working pixels (default: model input size / config overlap).
        geojson: also write a QuPath GeoJSON of instances (detections) and regions (annotations).
        instances: separate instances for every prompt (True), none (False) or only for
            cell/nucleus prompts (None).
        resume: continue an interrupted run in ``out``.
        dtype: ``"uint8"`` (probability x 255) or ``"float32"`` probabilities in the TIFFs.
        tissue: skip tiles without tissue on the thumbnail (skipped tiles are background).
        rows_per_band: tile rows per band (the unit of resume and of process splitting).
        on_band: ``callback(band_index, bands_done_by_this_process)`` after each band is saved.

    Returns:
        :class:`SlideResult` on the main process (None on the others).
    """
    import torch

    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [p.strip() for p in prompts] if prompts else []
    if not prompts or any(not p for p in prompts):
        raise SlideError("Every prompt must be a non-empty phrase such as 'tumor nuclei'; add --prompt P.")
    if dtype not in ("uint8", "float32"):
        raise SlideError(f"dtype={dtype!r}; use 'uint8' or 'float32'.")
    out = Path(out)
    cfg = model.config
    model_mpp = float(cfg.preprocess.mpp)
    tile = int(tile or cfg.preprocess.input_size)
    overlap = int(cfg.inference.tile_overlap if overlap is None else overlap)
    if tile > cfg.preprocess.input_size or tile < 16:
        raise SlideError(f"--tile {tile}: must be in [16, {cfg.preprocess.input_size}] (the model's input size).")
    if not 0 <= overlap <= tile // 2:
        raise SlideError(f"--overlap {overlap}: must be in [0, {tile // 2}] (at most half the tile).")
    mthr = float(cfg.inference.mask_threshold if mask_threshold is None else mask_threshold)
    procs = _Processes()
    if procs.device is not None:
        model.to(procs.device)

    with open_slide(path, mpp=mpp) as reader:
        require_mpp(reader)
        lv = reader.level(level) if level is not None else choose_level(reader, model_mpp)
        grid = WorkGrid(reader, lv, model_mpp)
        plan = BandPlan(grid.height, grid.width, tile, overlap, rows_per_band)
        stat = Path(path).stat()
        state = {"version": STATE_VERSION, "slide": str(Path(path).resolve()), "slide_bytes": stat.st_size,
                 "slide_mtime_ns": stat.st_mtime_ns, "prompts": list(prompts), "model": model.name,
                 "model_fingerprint": _model_fingerprint(model), "level": lv.index, "mpp": reader.mpp,
                 "work_shape": [grid.height, grid.width], "tile": tile, "overlap": overlap, "dtype": dtype,
                 "tissue": bool(tissue), "rows_per_band": rows_per_band, "bands": len(plan), "hires": hires}
        mode = _check_out(out, state, resume)  # every rank checks (read-only) so all fail alike
        procs.barrier()
        partial = out / PARTIAL
        if procs.is_main and mode == "fresh":
            shutil.rmtree(partial, ignore_errors=True)  # a staging folder without state: nothing to keep
            (partial / "parts").mkdir(parents=True, exist_ok=True)
            _atomic_json(partial / "state.json", state)
        procs.barrier()

        thumb, _ = reader.thumbnail(2048)
        tmask = tissue_mask(thumb) if tissue else np.ones(thumb.shape[:2], bool)
        tmap = TissueMap(tmask, grid.height, grid.width, margin=1 if tissue else 0)

        store = PartStore(partial / "parts", width=grid.width)
        mine = [b for b in bands_for_rank(len(plan), procs.rank, procs.world) if not store.done(b)]
        text_emb = model.encode_text(prompts)
        n_tiles = len(mine) * len(plan.xs) * rows_per_band
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tiles, unit="tile", desc="slide" if procs.world == 1 else f"slide[{procs.rank}]",
                   disable=not progress, dynamic_ncols=True, smoothing=0.1)
        progress_file = partial / f"progress-rank{procs.rank}.json"
        done_here: list[int] = []
        t_start = time.perf_counter()
        predicted = skipped = 0
        try:
            for b in mine:
                band = plan.bands[b]
                arrays, n_pred, n_skip = predict_band(model, grid, plan, band, text_emb, tmap if tissue else None,
                                                      dtype, hires, bar)
                store.save(b, arrays)
                predicted, skipped = predicted + n_pred, skipped + n_skip
                done_here.append(b)
                _atomic_json(progress_file, {"rank": procs.rank, "world": procs.world, "bands_done": done_here,
                                             "bands_total": len(plan)})
                if on_band is not None:
                    on_band(b, len(done_here))
        finally:
            bar.close()
        infer_s = time.perf_counter() - t_start
        procs.barrier()
        if not procs.is_main:
            return None
        missing = [b for b in range(len(plan)) if not store.done(b)]
        if missing:
            raise SlideError(f"bands {missing[:10]} have no results in '{store.folder}' (a process failed?); "
                             f"rerun with --resume.")
        with torch.no_grad():
            result = _finish(model, reader, grid, plan, store, prompts, out, partial, tmap, thumb, tmask,
                             dtype=dtype, mthr=mthr, geojson=geojson, instances=instances, state=state)
        result.extra.update(tiles_predicted=predicted, tiles_skipped=skipped, infer_seconds=infer_s)
        return result


def predict_band(model, grid: WorkGrid, plan: BandPlan, band, text_emb, tissue: TissueMap | None, dtype: str,
                 hires, bar=None) -> tuple[dict[str, np.ndarray], int, int]:
    """Predict the tiles of one band and blend them into its part arrays (see ``bands.band_arrays``)."""
    P = int(text_emb.shape[0])
    H, W = plan.height, plan.width
    tiles = plan.tiles(band)
    todo = [t for t in tiles if tissue is None or tissue.tile_has_tissue(t.y0, t.x0, t.y1, t.x1)]
    n_skip = len(tiles) - len(todo)
    # the canvas spans only the predicted tiles' columns: glass costs neither memory nor time
    x0 = min((t.x0 for t in todo), default=0)
    x1 = max((t.x1 for t in todo), default=0)
    sums = np.zeros((P, band.hi - band.lo, x1 - x0), np.float32)
    weight = np.zeros((band.hi - band.lo, x1 - x0), np.float32)
    presence = np.zeros(P, np.float32)
    n_pred = 0
    if bar is not None and n_skip:
        bar.update(n_skip)
    for t in todo:
        probs, pres = model._predict_window(grid.read(t.y0, t.y1, t.x0, t.x1), text_emb, None, None, hires)
        w = blend_weights(t, H, W, plan.overlap)
        sums[:, t.y0 - band.lo:t.y1 - band.lo, t.x0 - x0:t.x1 - x0] += probs * w
        weight[t.y0 - band.lo:t.y1 - band.lo, t.x0 - x0:t.x1 - x0] += w
        presence = np.maximum(presence, pres)
        n_pred += 1
        if bar is not None:
            bar.update(1)
    arrays = band_arrays(plan, band, sums, weight, dtype, x_offset=x0)
    arrays["presence"] = presence
    arrays["tiles"] = np.array([n_pred, n_skip], np.int64)
    return arrays, n_pred, n_skip


def _finish(model, reader, grid: WorkGrid, plan: BandPlan, store: PartStore, prompts: list[str], out: Path,
            partial: Path, tmap: TissueMap, thumb: np.ndarray, tmask: np.ndarray, *, dtype: str, mthr: float,
            geojson: bool, instances: bool | None, state: dict[str, Any]) -> SlideResult:
    from PIL import Image

    from .geojson import GeoJSONWriter, prompt_color
    from .instances import Geometry, InstanceAnalyzer, ObjectTable, RegionTracer, is_instance_prompt
    from .summary import PromptStats, slide_summary
    from .writer import write_pyramid

    final = partial / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir(parents=True)
    slugs = _slugs(prompts)
    inst_flags = [is_instance_prompt(p) if instances is None else bool(instances) for p in prompts]
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
    try:
        for p, prompt in enumerate(prompts):
            st = PromptStats(prompt, inst_flags[p], presence_max=float(presence[p]))
            color = prompt_color(p)
            analyzer = None
            if inst_flags[p]:
                def on_object(row, poly, prompt=prompt, color=color):
                    table.add(row)
                    if gj is not None and poly is not None:
                        gj.add(poly, name=prompt, color=color, object_type="detection",
                               measurements={k: v for k, v in row.items() if k not in ("prompt",)})

                analyzer = InstanceAnalyzer(prompt, geometry=geo, read_rgb=grid.read, next_id=next_id,
                                            on_object=on_object, want_polygons=gj is not None,
                                            margin=64, h=h_px, min_area=min_area)
            elif gj is not None:
                def on_polygon(poly, prompt=prompt, color=color, st=st):
                    area_um2 = poly.area * grid.mpp_x * grid.mpp_y
                    poly0 = geo.to_level0(poly.simplify(0.25, preserve_topology=True))
                    st.regions += 1
                    gj.add(poly0, name=prompt, color=color, object_type="annotation",
                           measurements={"area_um2": area_um2})

                analyzer = RegionTracer(height=grid.height, width=grid.width, on_polygon=on_polygon)

            def on_strip(r0, strip, st=st, analyzer=analyzer, first=(p == 0)):
                mask = strip > (thr_u8 if dtype == "uint8" else mthr)
                tis = tmap.rows(r0, r0 + len(strip))
                st.mask_pixels += int(mask.sum())
                st.mask_in_tissue_pixels += int(np.count_nonzero(mask & tis))
                if first:
                    tissue_px[0] += int(tis.sum())
                if analyzer is not None:
                    analyzer.push(r0, mask)

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
            "level": grid.level.index, "levels": [lv.describe() for lv in reader.levels],
            "slide_mpp": reader.mpp, "mpp_source": reader.mpp_source,
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
