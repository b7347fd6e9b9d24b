"""One working-resolution image through the predictor: one window, overlapping tiles blended (each gated by its own
presence), or the one window point/box prompts run in; flips averaged with ``tta``. The per-group step of
:func:`~.segment.segment_image`."""
from __future__ import annotations

import math

import numpy as np
import torch

from .tiling import BlendAccumulator, gate_by_presence, tile_grid


def predict_image(predictor, work: np.ndarray, n: int, text_emb, geo_points, geo_boxes, hires, overlap: int,
             progress: bool, *, separation: bool = False, tta: bool = False, gate: float | None = None):
    """``work uint8 [h, w, 3]`` at the group's µm/px -> (probs ``[n, h, w]``, gated probs ``[n, h, w]``, presence
    ``[n]``, separation maps ``[n, C, h, w]`` or None): one window, or overlapping tiles blended (presence: the
    maximum over tiles). The gated probabilities blend each window's probabilities after
    :func:`gate_by_presence` at ``gate`` (None: not gated, the same as the probabilities)."""
    size = predictor.config.preprocess.input_size
    h, w = work.shape[:2]
    if geo_points is not None or geo_boxes is not None:
        win = geometric_window(predictor, geo_points, geo_boxes)
        if h > win or w > win:
            p, s, sep = _predict_around(predictor, work, n, text_emb, geo_points, geo_boxes, hires, separation, tta, win)
        else:
            p, s, sep = _window(predictor, work, text_emb, geo_points, geo_boxes, hires, separation, tta)
        return p, (p if gate is None else gate_by_presence(p, s, gate)), s, sep
    if h <= size and w <= size:
        p, s, sep = _window(predictor, work, text_emb, None, None, hires, separation, tta)
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
        p, s, sep = _window(predictor, work[t.y0:t.y1, t.x0:t.x1], text_emb, None, None, hires, separation, tta)
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


def geometric_window(predictor, geo_points, geo_boxes) -> int:
    """Side (px) of the one window point/box prompts run in: ``inference.geometric_window`` (the size they were
    trained at) or, for prompts spanning more than that, their span plus a quarter; at most the input size.
    ``geometric_window`` 0: the input size."""
    size = predictor.config.preprocess.input_size
    geo = int(predictor.settings.geometric_window)
    if not geo:
        return size
    (x0, y0), (x1, y1) = _prompt_extent(geo_points, geo_boxes)
    return min(size, max(geo, 32 * math.ceil(1.25 * float(max(x1 - x0, y1 - y0)) / 32)))


def _predict_around(predictor, work: np.ndarray, n: int, text_emb, geo_points, geo_boxes, hires, separation: bool,
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
    p, s, sep = _window(predictor, work[y0:y0 + wh, x0:x0 + ww], text_emb, points, boxes, hires, separation, tta)
    probs = np.zeros((n, h, w), np.float32)
    probs[:, y0:y0 + wh, x0:x0 + ww] = p
    full_sep = None
    if sep is not None:
        full_sep = np.zeros((n, sep.shape[1], h, w), np.float32)
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


def _window(predictor, window: np.ndarray, text_emb, points, boxes, hires, separation: bool, tta: bool):
    """One window; with ``tta`` the mean over the identity, horizontal and vertical flips (flipped back; a
    flip negates its axis' centre-offset map). Point/box prompts are flipped with the window."""
    pred = predictor.predict_window_maps(window, text_emb, points, boxes, hires, separation=separation)
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
        q = predictor.predict_window_maps(np.flip(window, axis), text_emb, f_points, f_boxes, hires, separation=separation)
        probs.append(np.flip(q.probs, axis + 1))
        presence.append(q.presence)
        if separation:
            m = np.flip(q.separation, axis + 2).copy()
            m[:, 1 - axis] *= -1  # x offsets flip with a left-right flip, y offsets with an up-down flip
            seps.append(m)
    sep = np.mean(seps, axis=0).astype(np.float32) if separation else None
    return np.mean(probs, axis=0).astype(np.float32), np.mean(presence, axis=0).astype(np.float32), sep
