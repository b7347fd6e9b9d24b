"""Whole-slide inference, the orchestration: level choice, tissue skipping, banded tiled prediction
with resume and multi-process splitting, then one streaming pass per prompt that writes the
pyramidal TIFF, the instances/measurements, the GeoJSON and the summary. The parts: ``grid``
(working grid), ``processes`` (ranks), ``resume`` (state, ``out`` check), ``predict`` (one band),
``finalize`` (outputs).

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

import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from ..inference.predictor import as_predictor
from .bands import BandPlan, PartStore
from .finalize import SlideResult, _finish
from .grid import WorkGrid
from .mpp_auto import estimate_slide_mpp
from .predict import predict_band
from .processes import _Processes, bands_for_rank
from .reader import SlideError, choose_level, open_slide, require_mpp
from .resume import PARTIAL, _atomic_json, _check_out
from .run_plan import _InstancePlan, _resolve, _run_settings, _state, _tissue
from .tissue import TissueMap

__all__ = ["SlideResult", "segment_slide"]


def segment_slide(model, path: str | Path, prompts: str | Sequence[str], out: str | Path, *,
                  mpp: float | str | None = None, level: int | None = None, tile: int | None = None,
                  overlap: int | None = None, geojson: bool = False, instances: bool | None = None,
                  resume: bool = False, dtype: str = "uint8", tissue: bool = True, rows_per_band: int = 1,
                  mask_threshold: float | None = None, hires: bool | None = None, progress: bool = True,
                  on_band: Callable[[int, int], None] | None = None,
                  vocabulary: str = "model", backend: str = "auto") -> SlideResult | None:
    """Segment a whole-slide image, streaming, into ``out`` (see the module docstring for the files).

    Args:
        model: a :class:`pathsegmentor.PathSegmentor`, a network, or a
            :class:`~pathsegmentor.inference.predictor.Predictor`: its predictor's settings are the run's rules
            (thresholds, presence gate per window, instances, size limit, tissue filter), as in ``segment()``.
        path: the slide (pyramidal TIFF, SVS, OME-TIFF, NDPI; more with openslide-python).
        prompts: a phrase or list of phrases.
        mpp: level-0 microns per pixel, overriding (or supplying) the slide's metadata; ``"auto"``
            estimates it from the tissue (:mod:`pathsegmentor.inference.mpp_estimate`; the estimate,
            its uncertainty and method are in the summary's ``mpp_estimate``; an unreliable estimate
            raises :class:`SlideError` asking for ``mpp=X``).
        level: pyramid level to read (default: the level closest to the model's mpp, not coarser).
        tile / overlap: window and overlap in working pixels (default: model input size / config overlap).
        geojson: also write a QuPath GeoJSON of instances (detections) and regions (annotations).
        instances: separate instances for every prompt (True), none (False) or, as ``segment()`` decides, for
            the prompts of instance concepts (None: nuclei, cells, glands;
            :func:`~pathsegmentor.inference.separation.wants_instances`), with ``segment()``'s decoder and settings
            (:func:`~pathsegmentor.inference.separation.instance_decoding`).
        resume: continue an interrupted run in ``out``.
        dtype: ``"uint8"`` (probability x 255) or ``"float32"`` probabilities in the TIFFs.
        tissue: skip tiles without tissue on the thumbnail (skipped tiles are background).
        rows_per_band: tile rows per band (the unit of resume and of process splitting).
        on_band: ``callback(band_index, bands_done_by_this_process)`` after each band is saved.
        vocabulary: ``"model"``: prompts grounded in the ontology (see
            :mod:`pathsegmentor.inference.prompts`); refused ones are not run and are listed in the summary
            (``refused_prompts``), answered ones carry their resolution there and in the GeoJSON
            (``promptResolution``). ``"open"``: raw text, unchecked.
        backend: ``"auto"``, ``"tifffile"``, ``"openslide"`` or ``"dicom"`` (see
            :mod:`pathsegmentor.slide.reader`); the one used and why are in the summary.

    Returns:
        :class:`SlideResult` on the main process (None on the others).
    """
    import torch

    model = as_predictor(model).with_cache(None)  # slides read each window once: no image-encoding cache
    tile, overlap, mthr, pthr = _run_settings(model, tile, overlap, mask_threshold, dtype)
    resolutions, refused, group_mpps = _resolve(model, prompts, vocabulary)
    prompts, out = [r.prompt for r in resolutions], Path(out)  # refused prompts are not run (in the summary)
    procs = _Processes()
    if procs.device is not None:
        model.network.to(procs.device)

    with open_slide(path, mpp=None if mpp == "auto" else mpp, backend=backend) as reader:
        estimate = estimate_slide_mpp(reader) if mpp == "auto" else None
        require_mpp(reader)
        lv = reader.level(level) if level is not None else choose_level(reader, float(group_mpps[0]))
        grid = WorkGrid(reader, lv, float(group_mpps[0]))
        plan = BandPlan(grid.height, grid.width, tile, overlap, rows_per_band)
        state = _state(model, path, reader, grid, plan, prompts, resolutions, refused, group_mpps, estimate,
                       dtype=dtype, tissue=tissue, hires=hires, presence_threshold=pthr, rows_per_band=rows_per_band)
        partial = _stage(out, state, resume, procs)
        thumb, tmask, tmap = _tissue(reader, grid, tissue, model.settings)
        store = PartStore(partial / "parts", width=grid.width)
        mine = [b for b in bands_for_rank(len(plan), procs.rank, procs.world) if not store.done(b)]
        text_emb = model.encode_text([r.answered_as for r in resolutions])
        plan_inst = _InstancePlan.of(model, resolutions, instances, grid.mpp_x)
        t_start = time.perf_counter()
        predicted, skipped = _predict_bands(model, grid, plan, store, mine, text_emb, tmap if tissue else None,
                                            plan_inst, procs, partial / f"progress-rank{procs.rank}.json",
                                            dtype=dtype, hires=hires, presence_threshold=pthr, progress=progress,
                                            on_band=on_band)
        infer_s = time.perf_counter() - t_start
        procs.barrier()
        if not procs.is_main:
            return None
        _check_complete(store, plan)
        with torch.no_grad():
            result = _finish(model, reader, grid, plan, store, prompts, out, partial, tmap, thumb, tmask,
                             dtype=dtype, mthr=mthr, geojson=geojson, instances=plan_inst, state=state)
        result.extra.update(tiles_predicted=predicted, tiles_skipped=skipped, infer_seconds=infer_s)
        return result


def _stage(out: Path, state: dict, resume: bool, procs: _Processes) -> Path:
    """The run's staging folder ``out/.partial``, fresh or resumed (every rank checks ``out`` read-only, so all
    fail alike; the main process creates it and saves ``state``)."""
    mode = _check_out(out, state, resume)
    procs.barrier()
    partial = out / PARTIAL
    if procs.is_main and mode == "fresh":
        shutil.rmtree(partial, ignore_errors=True)  # a staging folder without state: nothing to keep
        (partial / "parts").mkdir(parents=True, exist_ok=True)
        _atomic_json(partial / "state.json", state)
    procs.barrier()
    return partial


def _check_complete(store: PartStore, plan: BandPlan) -> None:
    """SlideError naming the bands without saved results (a process failed), with the fix."""
    missing = [b for b in range(len(plan)) if not store.done(b)]
    if missing:
        raise SlideError(f"bands {missing[:10]} have no results in '{store.folder}' (a process failed?); "
                         f"rerun with --resume.")


def _predict_bands(model, grid: WorkGrid, plan: BandPlan, store: PartStore, mine: list[int], text_emb,
                   tmap: TissueMap | None, plan_inst: _InstancePlan, procs: _Processes, progress_file: Path, *,
                   dtype: str, hires: bool | None, presence_threshold: float, progress: bool,
                   on_band: Callable[[int, int], None] | None) -> tuple[int, int]:
    """This process' bands (``mine``) predicted and saved one by one (progress in ``progress_file``);
    returns the tiles (predicted, skipped as background)."""
    from tqdm.auto import tqdm

    n_tiles = sum(len(plan.bands[b].rows) for b in mine) * len(plan.xs)
    bar = tqdm(total=n_tiles, unit="tile", desc="slide" if procs.world == 1 else f"slide[{procs.rank}]",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    done_here: list[int] = []
    predicted = skipped = 0
    try:
        for b in mine:
            arrays, n_pred, n_skip = predict_band(model, grid, plan, plan.bands[b], text_emb, tmap, dtype, hires, bar,
                                                  sep_rows=plan_inst.sep_rows, presence_threshold=presence_threshold,
                                                  channels=plan_inst.channels)
            store.save(b, arrays)
            predicted, skipped = predicted + n_pred, skipped + n_skip
            done_here.append(b)
            _atomic_json(progress_file, {"rank": procs.rank, "world": procs.world, "bands_done": done_here,
                                         "bands_total": len(plan)})
            if on_band is not None:
                on_band(b, len(done_here))
    finally:
        bar.close()
    return predicted, skipped
