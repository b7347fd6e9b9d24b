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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..inference.plausibility import is_cell_concept
from ..inference.prompts import PromptResolution, resolve_prompts
from ..inference.separation import InstanceDecoding, instance_decoding, wants_instances, working_mpp
from .bands import BandPlan, PartStore
from .finalize import SlideResult, _finish
from .grid import WorkGrid
from .mpp_auto import estimate_slide_mpp
from .predict import predict_band
from .processes import _Processes, bands_for_rank
from .reader import SlideError, choose_level, open_slide, require_mpp
from .resume import PARTIAL, STATE_VERSION, _atomic_json, _check_out, _model_fingerprint
from .tissue import TissueMap, tissue_mask

__all__ = ["SlideResult", "segment_slide"]

MIN_TISSUE_UM2 = 50.0 * 50.0  # smaller pieces on the thumbnail are dust or specks, not tissue


def segment_slide(model, path: str | Path, prompts: str | Sequence[str], out: str | Path, *,
                  mpp: float | str | None = None, level: int | None = None, tile: int | None = None,
                  overlap: int | None = None, geojson: bool = False, instances: bool | None = None,
                  resume: bool = False, dtype: str = "uint8", tissue: bool = True, rows_per_band: int = 1,
                  mask_threshold: float | None = None, hires: bool | None = None, progress: bool = True,
                  on_band: Callable[[int, int], None] | None = None,
                  vocabulary: str = "model", backend: str = "auto") -> SlideResult | None:
    """Segment a whole-slide image, streaming, into ``out`` (see the module docstring for the files).

    Args:
        model: a :class:`~pathsegmentor.modeling.model.PathSegmentor` (or anything with its ``config``,
            ``encode_text`` and ``predict_window``).
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

    resolutions, refused = _resolve(model, prompts, vocabulary)
    prompts = [r.prompt for r in resolutions]  # refused prompts are not run (reported in the summary)
    if dtype not in ("uint8", "float32"):
        raise SlideError(f"dtype={dtype!r}; use 'uint8' or 'float32'.")
    out = Path(out)
    cfg = model.config
    # the prompts' working resolution (preprocess.structure_mpp: nuclei may run finer than glands); a mixed set
    # runs at the finest of them, said so in the summary
    group_mpps = sorted({working_mpp(cfg.preprocess, r.segmented_as) for r in resolutions})
    model_mpp = float(group_mpps[0])
    tile = int(tile or cfg.preprocess.input_size)
    overlap = int(cfg.inference.tile_overlap if overlap is None else overlap)
    if tile > cfg.preprocess.input_size or tile < 16:
        raise SlideError(f"--tile {tile}: must be in [16, {cfg.preprocess.input_size}] (the model's input size).")
    if not 0 <= overlap <= tile // 2:
        raise SlideError(f"--overlap {overlap}: must be in [0, {tile // 2}] (at most half the tile).")
    mthr = float(cfg.inference.mask_threshold if mask_threshold is None else mask_threshold)
    pthr = float(cfg.inference.presence_threshold)
    procs = _Processes()
    if procs.device is not None:
        model.to(procs.device)

    with open_slide(path, mpp=None if mpp == "auto" else mpp, backend=backend) as reader:
        estimate = estimate_slide_mpp(reader) if mpp == "auto" else None
        require_mpp(reader)
        lv = reader.level(level) if level is not None else choose_level(reader, model_mpp)
        grid = WorkGrid(reader, lv, model_mpp)
        plan = BandPlan(grid.height, grid.width, tile, overlap, rows_per_band)
        state = _state(model, path, reader, grid, plan, prompts, resolutions, refused, group_mpps, estimate,
                       dtype=dtype, tissue=tissue, hires=hires, presence_threshold=pthr, rows_per_band=rows_per_band)
        mode = _check_out(out, state, resume)  # every rank checks (read-only) so all fail alike
        procs.barrier()
        partial = out / PARTIAL
        if procs.is_main and mode == "fresh":
            shutil.rmtree(partial, ignore_errors=True)  # a staging folder without state: nothing to keep
            (partial / "parts").mkdir(parents=True, exist_ok=True)
            _atomic_json(partial / "state.json", state)
        procs.barrier()

        thumb, tmask, tmap = _tissue(reader, grid, tissue)

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
        missing = [b for b in range(len(plan)) if not store.done(b)]
        if missing:
            raise SlideError(f"bands {missing[:10]} have no results in '{store.folder}' (a process failed?); "
                             f"rerun with --resume.")
        with torch.no_grad():
            result = _finish(model, reader, grid, plan, store, prompts, out, partial, tmap, thumb, tmask,
                             dtype=dtype, mthr=mthr, geojson=geojson, instances=plan_inst, state=state)
        result.extra.update(tiles_predicted=predicted, tiles_skipped=skipped, infer_seconds=infer_s)
        return result


def _resolve(model, prompts: str | Sequence[str],
             vocabulary: str) -> tuple[list[PromptResolution], list[PromptResolution]]:
    """(answered, refused) resolutions of the prompts; SlideError for an empty phrase or when none is answered."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [p.strip() for p in prompts] if prompts else []
    if not prompts or any(not p for p in prompts):
        raise SlideError("Every prompt must be a non-empty phrase such as 'tumor nuclei'; add --prompt P.")
    try:
        resolutions = resolve_prompts(model, prompts, vocabulary)
    except ValueError as e:
        raise SlideError(str(e)) from None
    refused = [r for r in resolutions if not r.answered]
    answered = [r for r in resolutions if r.answered]
    if not answered:
        raise SlideError("No prompt this model can answer: " + "; ".join(r.reason for r in refused))
    return answered, refused


@dataclass(frozen=True)
class _InstancePlan:
    """Per prompt of a slide run, as ``segment()`` decides for it: its instance decoder (None: no instances), whether
    the nucleus size limit applies (a nucleus/cell concept), and which prompts' separation maps (``channels`` each)
    travel beside the probabilities as extra band planes (``sep_rows``)."""

    decoding: list[InstanceDecoding | None]
    size_limited: list[bool]
    sep_rows: list[int]
    channels: int

    @classmethod
    def of(cls, model, resolutions: list[PromptResolution], instances: bool | None, work_mpp: float) -> "_InstancePlan":
        flags = [wants_instances(r) if instances is None else bool(instances) for r in resolutions]
        decoding = [instance_decoding(model.config, r.segmented_as, "auto", decode_mpp=work_mpp) if f else None
                    for r, f in zip(resolutions, flags)]
        maps = getattr(model, "has_separation", False)
        sep_rows = [i for i, d in enumerate(decoding) if maps and d is not None and d.reads_maps]
        channels = int(getattr(getattr(model.config, "mask_decoder", None), "separation_channels", 0) or 3)
        return cls(decoding, [is_cell_concept(r.segmented_as) for r in resolutions], sep_rows, channels)


def _state(model, path: str | Path, reader, grid: WorkGrid, plan: BandPlan, prompts: list[str],
           resolutions: list[PromptResolution], refused: list[PromptResolution], group_mpps: list[float],
           estimate: dict | None, *, dtype: str, tissue: bool, hires: bool | None, presence_threshold: float,
           rows_per_band: int) -> dict:
    """The run's settings as saved in ``.partial/state.json``: a resume must match them all."""
    stat = Path(path).stat()
    return {"version": STATE_VERSION, "slide": str(Path(path).resolve()), "slide_bytes": stat.st_size,
            "slide_mtime_ns": stat.st_mtime_ns, "prompts": list(prompts), "model": model.name,
            "model_fingerprint": _model_fingerprint(model), "level": grid.level.index, "mpp": reader.mpp,
            "work_shape": [grid.height, grid.width], "tile": plan.tile, "overlap": plan.overlap, "dtype": dtype,
            "tissue": bool(tissue), "rows_per_band": rows_per_band, "bands": len(plan), "hires": hires,
            "presence_threshold": presence_threshold,
            "prompt_resolution": [r.to_dict() for r in resolutions],
            "refused_prompts": [r.to_dict() for r in refused], "backend": reader.backend,
            "work_mpp_note": ("" if len(group_mpps) == 1 else
                              f"prompts of working resolutions {group_mpps} µm/px run together at the finest, "
                              f"{group_mpps[0]}; run them separately for each one's own resolution"),
            **({"mpp_estimate": estimate} if estimate is not None else {})}


def _tissue(reader, grid: WorkGrid, tissue: bool) -> tuple[np.ndarray, np.ndarray, TissueMap]:
    """(thumbnail, its tissue mask, the :class:`TissueMap` on the working grid); ``tissue=False``: all tissue."""
    thumb, _ = reader.thumbnail(2048)
    thumb_px_um2 = reader.mpp ** 2 * (reader.dimensions[0] / thumb.shape[0]) * (reader.dimensions[1] / thumb.shape[1])
    min_px = int(MIN_TISSUE_UM2 / thumb_px_um2)
    tmask = tissue_mask(thumb, min_pixels=min_px) if tissue else np.ones(thumb.shape[:2], bool)
    return thumb, tmask, TissueMap(tmask, grid.height, grid.width, margin=1 if tissue else 0)


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
