"""``segment()``: any image in, full-resolution masks out, for N prompts with one image encoding.

Steps: decode the input to ``uint8 [H, W, 3]`` (:mod:`.image_io`) -> ground each text prompt in the
ontology (:mod:`.prompts`; refused prompts are not run) -> rescale to the model's µm/px ->
scale geometric prompts into the working frame -> one window, or overlapping tiles blended
(:mod:`.tiling`) -> probabilities back at the input size -> thresholds -> :class:`.result.SegmentationResult`.

The model is passed in; this module imports nothing from :mod:`pathsegmentor.modeling`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .image_io import ImageInput, resize_rgb, to_rgb_uint8
from .prompts import check_vocabulary, geometric, resolve_prompts
from .result import SegmentationResult
from .tiling import BlendAccumulator, tile_grid

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling.model import PathSegmentor


@torch.no_grad()
def segment_image(model: "PathSegmentor", image: ImageInput, prompts: str | Sequence[str] | None = None, *,
                  mpp: float | None = None, points: np.ndarray | None = None, point_labels: np.ndarray | None = None,
                  boxes: np.ndarray | None = None, mask_threshold: float | None = None,
                  presence_threshold: float | None = None, hires: bool | None = None,
                  tile_overlap: int | None = None, progress: bool = False,
                  vocabulary: str = "model") -> SegmentationResult:
    """``model.segment(...)``: see :meth:`pathsegmentor.modeling.model.PathSegmentor.segment` for the
    arguments. ``model`` needs ``config``, ``device``, ``name``, ``encode_text`` and ``predict_window``."""
    check_vocabulary(vocabulary)
    rgb = to_rgb_uint8(image)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts) if prompts is not None else []
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"Empty prompt {p!r}: every prompt must be a non-empty phrase such as 'tumor nuclei'.")
    if not prompts and points is None and boxes is None:
        raise ValueError("No prompt given: pass at least one text prompt (e.g. 'nuclei'), or points/boxes.")
    if mpp is not None and not (isinstance(mpp, (int, float)) and 0 < mpp < 100):
        raise ValueError(f"mpp={mpp!r} is not a valid microns-per-pixel value (expected e.g. 0.25 for 40x, 0.5 for 20x)")
    inf = model.config.inference
    mthr = inf.mask_threshold if mask_threshold is None else mask_threshold
    pthr = inf.presence_threshold if presence_threshold is None else presence_threshold
    overlap = inf.tile_overlap if tile_overlap is None else tile_overlap
    H, W = rgb.shape[:2]
    scale = 1.0 if mpp is None else float(mpp) / model.config.preprocess.mpp
    work = rgb
    if abs(scale - 1.0) > 1e-3:
        work = resize_rgb(rgb, (max(1, round(H * scale)), max(1, round(W * scale))))
    sy, sx = work.shape[0] / H, work.shape[1] / W

    geo_points = geo_boxes = None
    n = len(prompts)
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
        geo_boxes = torch.from_numpy(b).to(model.device)
    if points is not None:
        if point_labels is None:
            raise ValueError("points need point_labels (1 foreground, 0 background) of shape [N, P]")
        pc = np.asarray(points, dtype=np.float32)
        pc = pc.reshape(-1, pc.shape[-2], 2) if pc.ndim == 3 else pc.reshape(1, -1, 2)
        pl = np.asarray(point_labels).reshape(pc.shape[0], pc.shape[1])
        pc = pc * np.array([sx, sy], np.float32)
        geo_points = (torch.from_numpy(pc).to(model.device), torch.from_numpy(pl).long().to(model.device))
    n_geo = max(x.shape[0] if x is not None else 0 for x in (geo_boxes, geo_points[0] if geo_points else None))
    if n == 0:
        n = n_geo
        names = [f"<geometric prompt {i}>" for i in range(n)]
    else:
        names = prompts
        if n_geo not in (0, 1, n):
            raise ValueError(f"{n_geo} point/box sets for {n} text prompts: give one per prompt or one for all")
    if geo_boxes is not None and geo_boxes.shape[0] != n:
        geo_boxes = geo_boxes.expand(n, 4)
    if geo_points is not None and geo_points[0].shape[0] != n:
        geo_points = (geo_points[0].expand(n, -1, -1), geo_points[1].expand(n, -1))
    if prompts:
        resolutions = resolve_prompts(model, prompts, vocabulary)
    else:
        resolutions = [geometric(nm) for nm in names]
    keep = [i for i, r in enumerate(resolutions) if r.answered]
    if prompts and len(keep) < n:  # refused prompts are not run: empty mask, presence 0
        index = torch.tensor(keep, dtype=torch.long, device=model.device)
        geo_boxes = geo_boxes.index_select(0, index) if geo_boxes is not None else None
        geo_points = (geo_points[0].index_select(0, index), geo_points[1].index_select(0, index)) \
            if geo_points is not None else None
    text_emb = model.encode_text([resolutions[i].answered_as for i in keep]) if prompts and keep else None
    if keep:
        kept_probs, kept_presence = _predict(model, work, len(keep), text_emb, geo_points, geo_boxes, hires,
                                             overlap, progress)
    if len(keep) == n:
        probs, presence = kept_probs, kept_presence
    else:
        h, w = work.shape[:2]
        probs, presence = np.zeros((n, h, w), np.float32), np.zeros(n, np.float32)
        if keep:
            probs[keep], presence[keep] = kept_probs, kept_presence
    if probs.shape[-2:] != (H, W):
        probs = F.interpolate(torch.from_numpy(probs)[None], size=(H, W), mode="bilinear",
                              align_corners=False)[0].numpy()
    probs = probs.astype(np.float32, copy=False)  # our own array: clipped in place
    np.clip(probs, 0.0, 1.0, out=probs)
    if not prompts:  # geometric prompts assert the target is there; presence is a text-prompt notion
        presence = np.ones(n, np.float32)
    present = presence >= pthr
    masks = (probs > mthr) & present[:, None, None]
    return SegmentationResult(prompts=names, masks=masks, probs=probs, presence=presence.astype(np.float32),
                              image_size=(H, W), mpp=mpp, model=model.name,
                              thresholds={"mask": mthr, "presence": pthr}, resolutions=resolutions)


def _predict(model, work: np.ndarray, n: int, text_emb, geo_points, geo_boxes, hires, overlap: int,
             progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """``work uint8 [h, w, 3]`` at the model's µm/px -> (probs ``[n, h, w]``, presence ``[n]``): one window,
    or overlapping tiles blended (presence: the maximum over tiles)."""
    size = model.config.preprocess.input_size
    h, w = work.shape[:2]
    if h <= size and w <= size:
        return model.predict_window(work, text_emb, geo_points, geo_boxes, hires)
    if geo_points is not None or geo_boxes is not None:
        raise ValueError(
            f"Point/box prompts need the image to fit in one {size}x{size} window (after mpp "
            f"rescaling it is {h}x{w}); crop the region of interest first, or use text prompts.")
    tiles = tile_grid(h, w, size, overlap)
    acc = BlendAccumulator(n, h, w, overlap)
    presence = np.zeros(n, np.float32)
    it = tiles
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(tiles, desc="tiles", unit="tile")
    for t in it:
        p, s = model.predict_window(work[t.y0:t.y1, t.x0:t.x1], text_emb, None, None, hires)
        acc.add(t, p)
        presence = np.maximum(presence, s)
    return acc.result(), presence
