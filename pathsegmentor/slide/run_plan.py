"""What a whole-slide run decides before it predicts: its tile, overlap and thresholds, the prompts it answers, per
prompt the instance decoder and size limit (as ``segment()`` decides them), the state a resume must match, and the
tissue to run on: all from the model's :class:`~pathsegmentor.inference.predictor.Predictor` settings."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..inference.plausibility import is_cell_concept
from ..inference.predictor import Predictor
from ..inference.prompts import PromptResolution
from ..inference.separation import InstanceDecoding, instance_decoding, wants_instances, working_mpp
from .bands import BandPlan
from .grid import WorkGrid
from .reader import SlideError
from .resume import STATE_VERSION, _model_fingerprint
from .tissue import TissueMap, tissue_mask


def _run_settings(model: Predictor, tile: int | None, overlap: int | None, mask_threshold: float | None,
                  dtype: str) -> tuple[int, int, float, float]:
    """(tile, overlap, mask threshold, presence threshold) of a run: the caller's, else the model's settings;
    SlideError for a tile or overlap out of range, or an unknown ``dtype``."""
    if dtype not in ("uint8", "float32"):
        raise SlideError(f"dtype={dtype!r}; use 'uint8' or 'float32'.")
    cfg = model.config
    tile = int(tile or cfg.preprocess.input_size)
    overlap = int(cfg.inference.tile_overlap if overlap is None else overlap)
    if tile > cfg.preprocess.input_size or tile < 16:
        raise SlideError(f"--tile {tile}: must be in [16, {cfg.preprocess.input_size}] (the model's input size).")
    if not 0 <= overlap <= tile // 2:
        raise SlideError(f"--overlap {overlap}: must be in [0, {tile // 2}] (at most half the tile).")
    mthr = float(cfg.inference.mask_threshold if mask_threshold is None else mask_threshold)
    return tile, overlap, mthr, float(cfg.inference.presence_threshold)


def _resolve(model: Predictor, prompts: str | Sequence[str],
             vocabulary: str) -> tuple[list[PromptResolution], list[PromptResolution], list[float]]:
    """(answered, refused) resolutions of the prompts and the answered ones' working µm/px, sorted
    (``preprocess.structure_mpp``: nuclei may run finer than glands; a mixed set runs at the finest of them, said so
    in the summary); SlideError for an empty phrase or when none is answered."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [p.strip() for p in prompts] if prompts else []
    if not prompts or any(not p for p in prompts):
        raise SlideError("Every prompt must be a non-empty phrase such as 'tumor nuclei'; add --prompt P.")
    try:
        resolutions = model.resolve(prompts, vocabulary)
    except ValueError as e:
        raise SlideError(str(e)) from None
    refused = [r for r in resolutions if not r.answered]
    answered = [r for r in resolutions if r.answered]
    if not answered:
        raise SlideError("No prompt this model can answer: " + "; ".join(r.reason for r in refused))
    return answered, refused, sorted({working_mpp(model.config.preprocess, r.segmented_as) for r in answered})


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
    def of(cls, model: Predictor, resolutions: list[PromptResolution], instances: bool | None,
           work_mpp: float) -> "_InstancePlan":
        inf = model.settings
        flags = [wants_instances(r, inf) if instances is None else bool(instances) for r in resolutions]
        decoding = [instance_decoding(model.config, r.segmented_as, "auto", decode_mpp=work_mpp) if f else None
                    for r, f in zip(resolutions, flags)]
        maps = model.has_separation
        sep_rows = [i for i, d in enumerate(decoding) if maps and d is not None and d.reads_maps]
        # maps per prompt as the architecture says (a stub network without a mask_decoder section: 3)
        channels = int(getattr(getattr(model.config, "mask_decoder", None), "separation_channels", 0) or 3)
        return cls(decoding, [is_cell_concept(r.segmented_as, inf) for r in resolutions], sep_rows, channels)


def _state(model, path: str | Path, reader, grid: WorkGrid, plan: BandPlan, prompts: list[str],
           resolutions: list[PromptResolution], refused: list[PromptResolution], group_mpps: list[float],
           estimate: dict | None, *, dtype: str, tissue: bool, hires: bool | None, presence_threshold: float,
           rows_per_band: int) -> dict:
    """The run's settings as saved in ``.partial/state.json``: a resume must match them all."""
    stat = Path(path).stat()
    return {"version": STATE_VERSION, "slide": str(Path(path).resolve()), "slide_bytes": stat.st_size,
            "slide_mtime_ns": stat.st_mtime_ns, "prompts": list(prompts), "model": model.name,
            "model_fingerprint": _model_fingerprint(model.network), "level": grid.level.index, "mpp": reader.mpp,
            "work_shape": [grid.height, grid.width], "tile": plan.tile, "overlap": plan.overlap, "dtype": dtype,
            "tissue": bool(tissue), "rows_per_band": rows_per_band, "bands": len(plan), "hires": hires,
            "presence_threshold": presence_threshold,
            "prompt_resolution": [r.to_dict() for r in resolutions],
            "refused_prompts": [r.to_dict() for r in refused], "backend": reader.backend,
            "work_mpp_note": ("" if len(group_mpps) == 1 else
                              f"prompts of working resolutions {group_mpps} µm/px run together at the finest, "
                              f"{group_mpps[0]}; run them separately for each one's own resolution"),
            **({"mpp_estimate": estimate} if estimate is not None else {})}


def _tissue(reader, grid: WorkGrid, tissue: bool, settings) -> tuple[np.ndarray, np.ndarray, TissueMap]:
    """(thumbnail, its tissue mask, the :class:`TissueMap` on the working grid); ``tissue=False``: all tissue. The
    filter's rules are the inference ``settings``' ``tissue_*`` fields."""
    thumb, _ = reader.thumbnail(2048)
    thumb_px_um2 = reader.mpp ** 2 * (reader.dimensions[0] / thumb.shape[0]) * (reader.dimensions[1] / thumb.shape[1])
    min_px = int(float(settings.tissue_min_um2) / thumb_px_um2)
    tmask = (tissue_mask(thumb, min_saturation=float(settings.tissue_min_saturation), dark=int(settings.tissue_dark),
                         min_pixels=min_px) if tissue else np.ones(thumb.shape[:2], bool))
    return thumb, tmask, TissueMap(tmask, grid.height, grid.width, margin=1 if tissue else 0)
