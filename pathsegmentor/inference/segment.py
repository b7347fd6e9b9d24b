"""``segment()``: any image in, full-resolution masks out, for N prompts with one image encoding.

Steps: decode the input to ``uint8 [H, W, 3]`` (:mod:`.image_io`) -> check the points/boxes
(:mod:`.geometric_prompts`) -> ground each text prompt in the ontology (:mod:`.prompts`; refused prompts are not
run) -> rescale to the model's µm/px -> scale geometric prompts into the working frame -> one window, or
overlapping tiles blended (:mod:`.tiling`; each window gated by its own presence, as whole slides do) ->
probabilities back at the input size -> thresholds -> instances (:func:`.separation.instance_decoding`) and the
size limit (:mod:`.plausibility`) -> :class:`.result.SegmentationResult`.

It runs on a :class:`~.predictor.Predictor` (passed in: ``Predictor.segment`` calls it); this module imports
nothing from :mod:`pathsegmentor.modeling`. Every rule comes from the predictor's settings
(:class:`~pathsegmentor.modeling.inference_config.InferenceConfig`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometric_instances import segment_by_instances
from .geometric_prompts import geometric_inputs
from .image_io import ImageInput, resize_rgb, to_rgb_uint8
from .plausibility import drop_oversized
from .prompts import check_vocabulary, geometric
from .result import SegmentationResult
from .separation import DECODERS, instance_decoding, resize_labels, wants_instances, working_mpp
from .windows import predict_image

if TYPE_CHECKING:  # pragma: no cover
    from .predictor import Predictor

INSTANCE_CHOICES = ("auto", *DECODERS, "none")  # segment(instances=...): a decoder, the model's ("auto"), or none


@torch.no_grad()
def segment_image(predictor: "Predictor", image: ImageInput, prompts: str | Sequence[str] | None = None, *,
                  mpp: float | str | None = None, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                  boxes: np.ndarray | None = None, mask_threshold: float | None = None,
                  presence_threshold: float | None = None, hires: bool | None = None,
                  tile_overlap: int | None = None, progress: bool = False,
                  vocabulary: str = "model", instances: str = "auto", tta: bool = False) -> SegmentationResult:
    """``model.segment(...)`` as :meth:`Predictor.segment <pathsegmentor.inference.predictor.Predictor.segment>` runs
    it: see :meth:`pathsegmentor.inference.predictor.SegmentMixin.segment` for the arguments. ``predictor``: the
    :class:`~.predictor.Predictor` (its settings, resolver, caches and network)."""
    predictor.settings.check()
    check_vocabulary(vocabulary)
    rgb = to_rgb_uint8(image)
    prompts = _check_prompts(prompts, points, boxes)
    estimate = None
    if isinstance(mpp, str) and mpp == "auto":  # estimated from the image, reported, never silent
        from .mpp_estimate import estimate_mpp

        estimate = estimate_mpp(rgb)
        mpp = estimate.mpp
    if mpp is not None and (isinstance(mpp, (str, bool)) or not (isinstance(mpp, (int, float)) and 0 < mpp < 100)):
        raise ValueError(f"mpp={mpp!r} is not a valid microns-per-pixel value (expected e.g. 0.25 for 40x, 0.5 for "
                         f"20x, or 'auto' to estimate it from the image)")
    if instances not in INSTANCE_CHOICES:
        raise ValueError(f"instances={instances!r} is not an instance decoder. Available: {list(INSTANCE_CHOICES)} "
                         "('none' skips instance decoding)")
    inf = predictor.config.inference
    mthr = inf.mask_threshold if mask_threshold is None else mask_threshold
    pthr = inf.presence_threshold if presence_threshold is None else presence_threshold
    overlap = inf.tile_overlap if tile_overlap is None else tile_overlap
    H, W = rgb.shape[:2]
    names, geo_boxes, geo_points, n_geo = geometric_inputs(prompts, points, point_labels, boxes, (H, W))
    if inf.geometric_mode == "instances" and n_geo:  # a point/box answered by the model's instance under it
        def run(window: np.ndarray, prompt: str, with_instances: bool) -> SegmentationResult:
            decoder = ("auto" if instances == "none" else instances) if with_instances else "none"
            return segment_image(predictor, window, prompt, mpp=mpp, mask_threshold=mask_threshold,
                                 presence_threshold=presence_threshold, hires=hires, tile_overlap=tile_overlap,
                                 vocabulary=vocabulary, instances=decoder, tta=tta)

        return segment_by_instances(predictor, rgb, prompts, names, geo_boxes, geo_points, mpp, run, estimate,
                                    mask_threshold=mthr, presence_threshold=pthr)
    resolutions = predictor.resolve(prompts, vocabulary) if prompts else [geometric(nm) for nm in names]
    opts = _Options(mpp, mthr, pthr, overlap, hires, progress, instances, tta)
    masks, probs, presence, inst_maps = _segment_groups(predictor, rgb, bool(prompts), resolutions, geo_boxes,
                                                        geo_points, opts)
    return SegmentationResult(prompts=names, masks=masks, probs=probs, presence=presence,
                              image_size=(H, W), mpp=mpp, model=predictor.name,
                              thresholds={"mask": mthr, "presence": pthr}, resolutions=resolutions,
                              instances=inst_maps, mpp_estimate=estimate.to_dict() if estimate is not None else None,
                              instance_rows=None if inst_maps is None else
                              [bool(prompts) and instances != "none" and wants_instances(r, inf) for r in resolutions])


def _check_prompts(prompts: str | Sequence[str] | None, points, boxes) -> list[str]:
    """The text prompts as a list; ValueError for an empty phrase, or for no prompt of any kind."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts) if prompts is not None else []
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"Empty prompt {p!r}: every prompt must be a non-empty phrase such as 'tumor nuclei'.")
    if not prompts and points is None and boxes is None:
        raise ValueError("No prompt given: pass at least one text prompt (e.g. 'nuclei'), or points/boxes.")
    return prompts


@dataclass(frozen=True)
class _Options:
    """The per-call settings ``segment_image`` hands to the prompt groups."""

    mpp: float | None
    mthr: float
    pthr: float
    overlap: int
    hires: bool | None
    progress: bool
    instances: str
    tta: bool


def _segment_groups(predictor: "Predictor", rgb: np.ndarray, text: bool, resolutions, geo_boxes, geo_points, o: _Options):
    """Every answered prompt, in groups by working µm/px -> (masks ``bool [n, H, W]``, probs ``float32 [n, H, W]``,
    presence ``float32 [n]``, instances ``int32 [n, H, W]`` or None). A window whose presence for a text prompt is
    below ``o.pthr`` contributes no mask pixels for it (:func:`gate_by_presence`, as whole slides do)."""
    H, W = rgb.shape[:2]
    n = len(resolutions)
    inf = predictor.settings
    want = [text and o.instances != "none" and wants_instances(r, inf) for r in resolutions]
    decoding = [instance_decoding(predictor.config, r.segmented_as, o.instances) if w else None
                for r, w in zip(resolutions, want)]
    has_maps = predictor.has_separation
    probs = np.zeros((n, H, W), np.float32)
    gated = np.zeros((n, H, W), np.float32)
    presence = np.zeros(n, np.float32)
    inst_maps = np.zeros((n, H, W), np.int32) if any(want) else None
    for group_mpp, rows in _groups(predictor, resolutions, text, o.mpp, geo_boxes):
        scale = 1.0 if o.mpp is None else float(o.mpp) / group_mpp
        work = rgb
        if abs(scale - 1.0) > 1e-3:
            work = resize_rgb(rgb, (max(1, round(H * scale)), max(1, round(W * scale))))
        t_boxes, t_points = _to_working(predictor, geo_boxes, geo_points, rows, work.shape[0] / H, work.shape[1] / W)
        text_emb = predictor.encode_text([resolutions[i].answered_as for i in rows]) if text else None
        sep_here = has_maps and any(want[i] and decoding[i].reads_maps for i in rows)
        p, g, s, sep = predict_image(predictor, work, len(rows), text_emb, t_points, t_boxes, o.hires, o.overlap,
                                     o.progress, separation=sep_here, tta=o.tta, gate=o.pthr if text else None)
        presence[rows] = s
        for k, i in enumerate(rows):
            if want[i] and s[k] >= o.pthr:
                lab = decoding[i].decode(g[k] > o.mthr, sep[k] if sep is not None else None)
                inst_maps[i] = lab if lab.shape == (H, W) else resize_labels(lab, (H, W))
        probs[rows] = _to_size(p, (H, W))
        gated[rows] = _to_size(g, (H, W))
    np.clip(probs, 0.0, 1.0, out=probs)
    if not text:  # geometric prompts assert the target is there; presence is a text-prompt notion
        presence = np.ones(n, np.float32)
    masks = (gated > o.mthr) & (presence >= o.pthr)[:, None, None]
    if text:  # parts of a nucleus mask larger than any cluster of nuclei (ink, pigment, debris)
        drop_oversized(masks, inst_maps, [r.segmented_as if r.answered else None for r in resolutions],
                       [(o.mpp if o.mpp is not None else working_mpp(predictor.config.preprocess, r.segmented_as)) ** 2
                        for r in resolutions], inf)
    return masks, probs, presence.astype(np.float32), inst_maps


def _to_working(predictor, geo_boxes, geo_points, rows: list[int], sy: float, sx: float):
    """The group's boxes (``[k, 4]``) and points (coords ``[k, P, 2]``, labels ``[k, P]``) scaled by ``(sy, sx)``
    into the working frame, as tensors on the predictor's device (None where not given)."""
    t_boxes = t_points = None
    if geo_boxes is not None:
        t_boxes = torch.from_numpy(np.ascontiguousarray(geo_boxes[rows] * np.array([sx, sy, sx, sy], np.float32)))
        t_boxes = t_boxes.to(predictor.device)
    if geo_points is not None:
        pc = np.ascontiguousarray(geo_points[0][rows] * np.array([sx, sy], np.float32))
        t_points = (torch.from_numpy(pc).to(predictor.device),
                    torch.from_numpy(np.ascontiguousarray(geo_points[1][rows])).long().to(predictor.device))
    return t_boxes, t_points


def _to_size(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``float32 [n, h, w]`` resized (bilinear) to ``[n, *size]``; returned as is when it has that size."""
    if a.shape[-2:] == size:
        return a
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(a))[None], size=size, mode="bilinear",
                         align_corners=False)[0].numpy()


def _groups(predictor, resolutions, text: bool, mpp: float | None, boxes=None) -> list[tuple[float, list[int]]]:
    """Answered prompts grouped by working µm/px (``preprocess.structure_mpp``; without an input ``mpp``
    nothing is rescaled, so every prompt runs in one group). Geometric prompts alone run at the finest
    working resolution (a cell's) when they are points, or boxes of at most ``inference.geometric_cell_box_um`` µm;
    larger boxes at the model's ``mpp``."""
    pp = predictor.config.preprocess
    rows = [i for i, r in enumerate(resolutions) if r.answered]
    table = pp.structure_mpp
    if mpp is not None and not text and table and rows:
        fine = float(min([pp.mpp, *table.values()]))
        side_um = 0.0 if boxes is None else float(np.max(np.concatenate(
            [boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]))) * float(mpp)
        return [(fine if side_um <= predictor.settings.geometric_cell_box_um else pp.mpp, rows)]
    if mpp is None or not text or not table:
        return [(pp.mpp, rows)] if rows else []
    by: dict[float, list[int]] = {}
    for i in rows:
        by.setdefault(working_mpp(pp, resolutions[i].segmented_as), []).append(i)
    return sorted(by.items())
