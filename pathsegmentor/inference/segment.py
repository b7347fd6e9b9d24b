"""``segment()``: any image in, full-resolution masks out, for N prompts with one image encoding.

Steps: decode the input to ``uint8 [H, W, 3]`` (:mod:`.image_io`) -> check the points/boxes
(:mod:`.geometric_prompts`) -> ground each text prompt in the ontology (:mod:`.prompts`; refused prompts are not
run) -> rescale to the model's µm/px -> scale geometric prompts into the working frame -> one window, or
overlapping tiles blended (:mod:`.tiling`; each window gated by its own presence, as whole slides do) ->
probabilities back at the input size -> thresholds -> instances (:func:`.separation.instance_decoding`) and the
size limit (:mod:`.plausibility`) -> :class:`.result.SegmentationResult`.

The model is passed in; this module imports nothing from :mod:`pathsegmentor.modeling`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometric_instances import CELL_BOX_UM, check_geometric_box, check_geometric_mode, segment_by_instances
from .geometric_prompts import geometric_inputs
from .image_io import ImageInput, resize_rgb, to_rgb_uint8
from .plausibility import drop_oversized
from .prompts import check_vocabulary, geometric, resolve_prompts
from .result import SegmentationResult
from .separation import instance_decoding, resize_labels, wants_instances, working_mpp
from .tiling import BlendAccumulator, gate_by_presence, tile_grid

INSTANCE_CHOICES = ("auto", "hv", "distance", "border", "watershed", "none")

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling.model import PathSegmentor


@torch.no_grad()
def segment_image(model: "PathSegmentor", image: ImageInput, prompts: str | Sequence[str] | None = None, *,
                  mpp: float | str | None = None, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                  boxes: np.ndarray | None = None, mask_threshold: float | None = None,
                  presence_threshold: float | None = None, hires: bool | None = None,
                  tile_overlap: int | None = None, progress: bool = False,
                  vocabulary: str = "model", instances: str = "auto", tta: bool = False) -> SegmentationResult:
    """``model.segment(...)``: see :meth:`pathsegmentor.modeling.model.PathSegmentor.segment` for the
    arguments. ``model`` needs ``config``, ``device``, ``name``, ``encode_text`` and ``predict_window``."""
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
    inf = model.config.inference
    mthr = inf.mask_threshold if mask_threshold is None else mask_threshold
    pthr = inf.presence_threshold if presence_threshold is None else presence_threshold
    overlap = inf.tile_overlap if tile_overlap is None else tile_overlap
    H, W = rgb.shape[:2]
    names, geo_boxes, geo_points, n_geo = geometric_inputs(prompts, points, point_labels, boxes, (H, W))
    mode = getattr(inf, "geometric_mode", "learned")
    check_geometric_mode(mode)
    if mode == "instances" and n_geo:  # a point/box answered by the model's instance under it
        check_geometric_box(getattr(inf, "geometric_box", "best_instance"))

        def run(window: np.ndarray, prompt: str, with_instances: bool) -> SegmentationResult:
            decoder = ("auto" if instances == "none" else instances) if with_instances else "none"
            return segment_image(model, window, prompt, mpp=mpp, mask_threshold=mask_threshold,
                                 presence_threshold=presence_threshold, hires=hires, tile_overlap=tile_overlap,
                                 vocabulary=vocabulary, instances=decoder, tta=tta)

        return segment_by_instances(model, rgb, prompts, names, geo_boxes, geo_points, mpp, run, estimate,
                                    mask_threshold=mthr, presence_threshold=pthr)
    resolutions = resolve_prompts(model, prompts, vocabulary) if prompts else [geometric(nm) for nm in names]
    opts = _Options(mpp, mthr, pthr, overlap, hires, progress, instances, tta)
    masks, probs, presence, inst_maps = _segment_groups(model, rgb, bool(prompts), resolutions, geo_boxes,
                                                        geo_points, opts)
    return SegmentationResult(prompts=names, masks=masks, probs=probs, presence=presence,
                              image_size=(H, W), mpp=mpp, model=model.name,
                              thresholds={"mask": mthr, "presence": pthr}, resolutions=resolutions,
                              instances=inst_maps, mpp_estimate=estimate.to_dict() if estimate is not None else None)


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


def _segment_groups(model, rgb: np.ndarray, text: bool, resolutions, geo_boxes, geo_points, o: _Options):
    """Every answered prompt, in groups by working µm/px -> (masks ``bool [n, H, W]``, probs ``float32 [n, H, W]``,
    presence ``float32 [n]``, instances ``int32 [n, H, W]`` or None). A window whose presence for a text prompt is
    below ``o.pthr`` contributes no mask pixels for it (:func:`gate_by_presence`, as whole slides do)."""
    H, W = rgb.shape[:2]
    n = len(resolutions)
    want = [text and o.instances != "none" and wants_instances(r) for r in resolutions]
    decoding = [instance_decoding(model.config, r.segmented_as, o.instances) if w else None
                for r, w in zip(resolutions, want)]
    has_maps = getattr(model, "has_separation", False)
    probs = np.zeros((n, H, W), np.float32)
    gated = np.zeros((n, H, W), np.float32)
    presence = np.zeros(n, np.float32)
    inst_maps = np.zeros((n, H, W), np.int32) if any(want) else None
    for group_mpp, rows in _groups(model, resolutions, text, o.mpp, geo_boxes):
        scale = 1.0 if o.mpp is None else float(o.mpp) / group_mpp
        work = rgb
        if abs(scale - 1.0) > 1e-3:
            work = resize_rgb(rgb, (max(1, round(H * scale)), max(1, round(W * scale))))
        t_boxes, t_points = _to_working(model, geo_boxes, geo_points, rows, work.shape[0] / H, work.shape[1] / W)
        text_emb = model.encode_text([resolutions[i].answered_as for i in rows]) if text else None
        sep_here = has_maps and any(want[i] and decoding[i].reads_maps for i in rows)
        p, g, s, sep = _predict(model, work, len(rows), text_emb, t_points, t_boxes, o.hires, o.overlap, o.progress,
                                separation=sep_here, tta=o.tta, gate=o.pthr if text else None)
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
                       [(o.mpp if o.mpp is not None else working_mpp(model.config.preprocess, r.segmented_as)) ** 2
                        for r in resolutions],
                       float(getattr(model.config.inference, "max_cell_component_um2", 0.0) or 0.0))
    return masks, probs, presence.astype(np.float32), inst_maps


def _to_working(model, geo_boxes, geo_points, rows: list[int], sy: float, sx: float):
    """The group's boxes (``[k, 4]``) and points (coords ``[k, P, 2]``, labels ``[k, P]``) scaled by ``(sy, sx)``
    into the working frame, as tensors on the model's device (None where not given)."""
    t_boxes = t_points = None
    if geo_boxes is not None:
        t_boxes = torch.from_numpy(np.ascontiguousarray(geo_boxes[rows] * np.array([sx, sy, sx, sy], np.float32)))
        t_boxes = t_boxes.to(model.device)
    if geo_points is not None:
        pc = np.ascontiguousarray(geo_points[0][rows] * np.array([sx, sy], np.float32))
        t_points = (torch.from_numpy(pc).to(model.device),
                    torch.from_numpy(np.ascontiguousarray(geo_points[1][rows])).long().to(model.device))
    return t_boxes, t_points


def _to_size(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``float32 [n, h, w]`` resized (bilinear) to ``[n, *size]``; returned as is when it has that size."""
    if a.shape[-2:] == size:
        return a
    return F.interpolate(torch.from_numpy(np.ascontiguousarray(a))[None], size=size, mode="bilinear",
                         align_corners=False)[0].numpy()


def _groups(model, resolutions, text: bool, mpp: float | None, boxes=None) -> list[tuple[float, list[int]]]:
    """Answered prompts grouped by working µm/px (``preprocess.structure_mpp``; without an input ``mpp``
    nothing is rescaled, so every prompt runs in one group). Geometric prompts alone run at the finest
    working resolution (a cell's) when they are points, or boxes of at most ``CELL_BOX_UM`` µm; larger
    boxes at the model's ``mpp``."""
    pp = model.config.preprocess
    rows = [i for i, r in enumerate(resolutions) if r.answered]
    table = getattr(pp, "structure_mpp", None) or {}
    if mpp is not None and not text and table and rows:
        fine = float(min([pp.mpp, *table.values()]))
        side_um = 0.0 if boxes is None else float(np.max(np.concatenate(
            [boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]]))) * float(mpp)
        return [(fine if side_um <= CELL_BOX_UM else pp.mpp, rows)]
    if mpp is None or not text or not table:
        return [(pp.mpp, rows)] if rows else []
    by: dict[float, list[int]] = {}
    for i in rows:
        by.setdefault(working_mpp(pp, resolutions[i].segmented_as), []).append(i)
    return sorted(by.items())


def _predict(model, work: np.ndarray, n: int, text_emb, geo_points, geo_boxes, hires, overlap: int,
             progress: bool, *, separation: bool = False, tta: bool = False, gate: float | None = None):
    """``work uint8 [h, w, 3]`` at the group's µm/px -> (probs ``[n, h, w]``, gated probs ``[n, h, w]``, presence
    ``[n]``, separation maps ``[n, C, h, w]`` or None): one window, or overlapping tiles blended (presence: the
    maximum over tiles). The gated probabilities blend each window's probabilities after
    :func:`gate_by_presence` at ``gate`` (None: not gated, the same as the probabilities)."""
    size = model.config.preprocess.input_size
    h, w = work.shape[:2]
    if geo_points is not None or geo_boxes is not None:
        win = _geometric_window(model, geo_points, geo_boxes)
        if h > win or w > win:
            p, s, sep = _predict_around(model, work, n, text_emb, geo_points, geo_boxes, hires, separation, tta, win)
        else:
            p, s, sep = _window(model, work, text_emb, geo_points, geo_boxes, hires, separation, tta)
        return p, (p if gate is None else gate_by_presence(p, s, gate)), s, sep
    if h <= size and w <= size:
        p, s, sep = _window(model, work, text_emb, None, None, hires, separation, tta)
        return p, (p if gate is None else gate_by_presence(p, s, gate)), s, sep
    tiles = tile_grid(h, w, size, overlap)
    acc = BlendAccumulator(n, h, w, overlap)
    gated = BlendAccumulator(n, h, w, overlap) if gate is not None else None
    sep_acc = None
    presence = np.zeros(n, np.float32)
    it = tiles
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(tiles, desc="tiles", unit="tile")
    for t in it:
        p, s, sep = _window(model, work[t.y0:t.y1, t.x0:t.x1], text_emb, None, None, hires, separation, tta)
        acc.add(t, p)
        if gated is not None:
            gated.add(t, gate_by_presence(p, s, gate))
        if sep is not None:
            if sep_acc is None:  # C channels per prompt: 3, or 4 with the thick-border map
                sep_acc = BlendAccumulator(n * sep.shape[1], h, w, overlap)
            sep_acc.add(t, sep.reshape(-1, *sep.shape[-2:]))
        presence = np.maximum(presence, s)
    probs = acc.result()
    return (probs, gated.result() if gated is not None else probs, presence,
            sep_acc.result().reshape(n, -1, h, w) if sep_acc is not None else None)


def _geometric_window(model, geo_points, geo_boxes) -> int:
    """Side (px) of the one window point/box prompts run in: ``inference.geometric_window`` (the size they were
    trained at) or, for prompts spanning more than that, their span plus a quarter; at most the input size.
    ``geometric_window`` 0: the input size."""
    size = model.config.preprocess.input_size
    geo = int(getattr(model.config.inference, "geometric_window", 0) or 0)
    if geo < 0:
        raise ValueError(f"inference.geometric_window is {geo}; it must be 0 (the input size) or a window side in "
                         f"px, e.g. 256 (set it in the model's config.json)")
    if not geo:
        return size
    (x0, y0), (x1, y1) = _prompt_extent(geo_points, geo_boxes)
    return min(size, max(geo, 32 * math.ceil(1.25 * float(max(x1 - x0, y1 - y0)) / 32)))


def _predict_around(model, work: np.ndarray, n: int, text_emb, geo_points, geo_boxes, hires, separation: bool,
                    tta: bool, size: int):
    """Point/box prompts on an image larger than one ``size`` px window: one window centred on the prompts (their
    union must fit in it), predicted there and pasted into an empty canvas of the full size."""
    h, w = work.shape[:2]
    (ux0, uy0), (ux1, uy1) = _prompt_extent(geo_points, geo_boxes)
    if ux1 - ux0 > size or uy1 - uy0 > size:
        raise ValueError(
            f"Point/box prompts spanning {ux1 - ux0:.0f}x{uy1 - uy0:.0f} px (at the working resolution) do not fit "
            f"in one {size}x{size} window; give prompts closer together, or one call per region.")
    ww, wh = min(size, w), min(size, h)
    x0 = int(np.clip(round((ux0 + ux1) / 2 - ww / 2), 0, w - ww))
    y0 = int(np.clip(round((uy0 + uy1) / 2 - wh / 2), 0, h - wh))
    shift = torch.tensor([x0, y0], dtype=torch.float32, device=_device(geo_boxes, geo_points))
    boxes = (geo_boxes - shift.repeat(2)) if geo_boxes is not None else None
    points = (geo_points[0] - shift, geo_points[1]) if geo_points is not None else None
    p, s, sep = _window(model, work[y0:y0 + wh, x0:x0 + ww], text_emb, points, boxes, hires, separation, tta)
    probs = np.zeros((n, h, w), np.float32)
    probs[:, y0:y0 + wh, x0:x0 + ww] = p
    full_sep = None
    if sep is not None:
        full_sep = np.zeros((n, 3, h, w), np.float32)
        full_sep[..., y0:y0 + wh, x0:x0 + ww] = sep
    return probs, s, full_sep


def _prompt_extent(geo_points, geo_boxes) -> tuple[np.ndarray, np.ndarray]:
    """(min XY, max XY) over every box corner and point, in working pixels."""
    xy = []
    if geo_boxes is not None:
        xy.append(geo_boxes.reshape(-1, 2))
    if geo_points is not None:
        xy.append(geo_points[0].reshape(-1, 2))
    pts = torch.cat(xy).float().cpu().numpy()
    return pts.min(0), pts.max(0)


def _device(geo_boxes, geo_points) -> torch.device:
    return (geo_boxes if geo_boxes is not None else geo_points[0]).device


def _window(model, window: np.ndarray, text_emb, points, boxes, hires, separation: bool, tta: bool):
    """One window; with ``tta`` the mean over the identity, horizontal and vertical flips (flipped back; a
    flip negates its axis' centre-offset map). Point/box prompts are flipped with the window."""
    if not separation and not tta and not hasattr(model, "predict_window_maps"):
        p, s = model.predict_window(window, text_emb, points, boxes, hires)
        return p, s, None
    pred = model.predict_window_maps(window, text_emb, points, boxes, hires, separation=separation)
    if not tta:
        return pred.probs, pred.presence, pred.separation
    h, w = window.shape[:2]
    probs, presence = [pred.probs], [pred.presence]
    seps = [pred.separation] if separation else []
    for axis in (1, 0):  # 1: left-right (x), 0: up-down (y)
        f_points = f_boxes = None
        if points is not None:
            c = points[0].clone()
            c[..., 1 - axis] = (w if axis == 1 else h) - c[..., 1 - axis]
            f_points = (c, points[1])
        if boxes is not None:
            b = boxes.clone()
            if axis == 1:
                b[:, [0, 2]] = w - boxes[:, [2, 0]]
            else:
                b[:, [1, 3]] = h - boxes[:, [3, 1]]
            f_boxes = b
        q = model.predict_window_maps(np.flip(window, axis), text_emb, f_points, f_boxes, hires, separation=separation)
        probs.append(np.flip(q.probs, axis + 1))
        presence.append(q.presence)
        if separation:
            m = np.flip(q.separation, axis + 2).copy()
            m[:, 1 - axis] *= -1  # x offsets flip with a left-right flip, y offsets with an up-down flip
            seps.append(m)
    sep = np.mean(seps, axis=0).astype(np.float32) if separation else None
    return np.mean(probs, axis=0).astype(np.float32), np.mean(presence, axis=0).astype(np.float32), sep
