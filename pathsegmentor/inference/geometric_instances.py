"""Point and box prompts answered through the instance decoder (``inference.geometric_mode = "instances"``).

A click or a box means "this object". Instead of decoding the point/box tokens (the ``"learned"`` mode,
which needs far more geometric training than ``pathsegmentor-tiny`` had), each prompt is answered by the
model's own text-prompted instances in a window around it:

* **point alone**: the instance of the finest instance concept the model answers (``inference.geometric_concepts``:
  nuclei, then glands) under the first foreground point, or the nearest one within ``inference.geometric_near_um``
  µm (a click on a rim the predicted mask misses); else an empty mask.
* **box alone**: the concept is chosen by the box size (a box of at most ``inference.geometric_cell_box_um`` µm
  frames a nucleus, a larger one a gland); the object is picked by ``inference.geometric_box`` (:data:`BOX_RULES`;
  default: the instance whose bounding box best overlaps the box), clipped to the box.
* **text + box**: the text prompt's mask (as ``segment`` answers it) clipped to the box; **text + point**:
  the text's instance under the point.

The window is the prompt's extent plus half on each side, at least ``inference.geometric_window`` px
(the input size when 0) at the concept's working µm/px, so a point on a whole-slide region costs one window.
Every number here is a field of the model's ``inference`` settings.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .prompts import PromptResolution
from .separation import working_mpp

# how a box alone picks its object from the concept's mask and instances in the window (inference.geometric_box)
BOX_RULES = {
    "best_instance": "the instance that best fills the box",
    "contained_instances": "the instances lying mostly inside the box",
    "component": "the largest connected part of the mask inside the box, holes filled",
    "mask": "the mask inside the box",
}
INSTANCE_BOX_RULES = ("best_instance", "contained_instances")  # the rules that read the instance labels


def check_geometric_box(rule: str) -> None:
    if rule not in BOX_RULES:
        raise ValueError(f"inference.geometric_box is {rule!r}. Available: "
                         f"{', '.join(f'{k!r} ({v})' for k, v in BOX_RULES.items())}; set it in the model's config.json")


def box_object(labels: np.ndarray | None, mask: np.ndarray, box: tuple[float, float, float, float],
               rule: str, contained_fraction: float = 0.5) -> np.ndarray | None:
    """``bool [h, w]``: the object a box alone selects from a window's ``mask`` (``bool [h, w]``) and instance
    ``labels`` (``int [h, w]``, 0 background; None: the mask's connected components), clipped to the XYXY
    ``box``, by ``rule`` (:data:`BOX_RULES`); None when it selects nothing. ``contained_fraction``: with
    ``"contained_instances"``, the share of an instance's area that must lie inside the box."""
    from scipy import ndimage as ndi

    check_geometric_box(rule)
    inside = _inside(mask.shape, box)
    if rule == "mask":
        obj = mask & inside
    elif rule == "component":
        comps, n = ndi.label(mask & inside)
        # an object has no holes (a gland's lumen, a nucleus' pale centre belong to it)
        obj = ndi.binary_fill_holes(comps == (int(np.argmax(np.bincount(comps.ravel())[1:])) + 1)) if n else None
    else:
        if labels is None or not labels.any():
            labels, _ = ndi.label(mask)
        if not labels.any():
            return None
        if rule == "best_instance":
            scores = [_box_iou(sl, box) if sl is not None else 0.0 for sl in ndi.find_objects(labels)]
            obj = labels == int(np.argmax(scores)) + 1 if max(scores) > 0 else None
        else:
            total = np.bincount(labels.ravel())
            within = np.bincount(labels[inside].ravel(), minlength=len(total))
            keep = np.nonzero(within[1:] >= contained_fraction * np.maximum(total[1:], 1))[0] + 1
            obj = np.isin(labels, keep) if len(keep) else None
        obj = obj & inside if obj is not None else None
    return obj if obj is not None and obj.any() else None


def _window(extent: tuple[float, float, float, float], side: float, h: int, w: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of a window of at least ``side`` px holding ``extent`` (XYXY) plus half its span."""
    x0, y0, x1, y1 = extent
    sw = max(side, 2.0 * (x1 - x0))
    sh = max(side, 2.0 * (y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    wx0, wy0 = int(max(0, np.floor(cx - sw / 2))), int(max(0, np.floor(cy - sh / 2)))
    return wy0, int(min(h, np.ceil(cy + sh / 2))), wx0, int(min(w, np.ceil(cx + sw / 2)))


def _object_near(labels: np.ndarray | None, mask: np.ndarray, x: int, y: int, radius: float) -> np.ndarray:
    """The object under ``(x, y)``, else the nearest one within ``radius`` px (a click on a nucleus' rim that
    the predicted mask misses): from the instance ``labels``, else the connected components of ``mask``."""
    from scipy import ndimage as ndi

    if labels is None or not labels.any():
        labels, _ = ndi.label(mask)
    if labels[y, x]:
        return labels == labels[y, x]
    if not labels.any():
        return np.zeros_like(mask)
    r = int(np.ceil(radius))
    ys, ye, xs, xe = max(0, y - r), y + r + 1, max(0, x - r), x + r + 1
    patch = labels[ys:ye, xs:xe]
    if not patch.any():
        return np.zeros_like(mask)
    dist, (iy, ix) = ndi.distance_transform_edt(patch == 0, return_indices=True)
    py, px = y - ys, x - xs
    if dist[py, px] > radius:
        return np.zeros_like(mask)
    return labels == patch[iy[py, px], ix[py, px]]


def _box_iou(sl: tuple[slice, slice], box: tuple[float, float, float, float]) -> float:
    """IoU of an object's bounding box (``ndimage.find_objects`` slices) with an XYXY box."""
    a = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    ix = max(0.0, min(a[2], box[2]) - max(a[0], box[0]))
    iy = max(0.0, min(a[3], box[3]) - max(a[1], box[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _inside(shape: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """``bool shape``: the pixels an XYXY box covers (rounded outwards)."""
    out = np.zeros(shape, bool)
    out[max(0, int(np.floor(box[1]))):max(0, int(np.ceil(box[3]))),
        max(0, int(np.floor(box[0]))):max(0, int(np.ceil(box[2])))] = True
    return out


def answer_geometric(model, rgb: np.ndarray, *, text: str | None, box: np.ndarray | None,
                     point: np.ndarray | None, mpp: float | None, run: Callable,
                     answerable: set[str]) -> tuple[np.ndarray, float, PromptResolution | None, str]:
    """One point/box prompt on ``rgb uint8 [H, W, 3]`` -> (``bool [H, W]`` mask, presence in [0, 1],
    the text's resolution or None, how it was answered).

    ``run(window_rgb, prompt, instances)`` segments one text prompt on a window (``segment`` with the caller's
    options) and returns its :class:`~.result.SegmentationResult`; ``answerable``: the concepts the model
    answers; ``box`` XYXY and ``point`` XY in input pixels."""
    h, w = rgb.shape[:2]
    pp, inf = model.config.preprocess, model.config.inference
    m_in = float(mpp) if mpp is not None else float(pp.mpp)
    base = float(inf.geometric_window or pp.input_size)
    rule = inf.geometric_box
    small, large = inf.geometric_concepts
    out = np.zeros((h, w), bool)
    if box is not None:
        b = tuple(float(v) for v in box)
        extent = b
        side_um = max(b[2] - b[0], b[3] - b[1]) * m_in
        concepts = [text] if text else [small if side_um <= inf.geometric_cell_box_um else large]
    else:
        px, py = float(point[0]), float(point[1])
        extent = (px, py, px, py)
        concepts = [text] if text else [c for c in inf.geometric_concepts if c in answerable]
    for concept in concepts:
        if not text and concept not in answerable:
            continue
        # the window side in input px: ``base`` px at the concept's working µm/px (no rescaling without an mpp)
        side = base * working_mpp(pp, concept) / m_in if mpp is not None else base
        y0, y1, x0, x1 = _window(extent, side, h, w)
        # instances are decoded only where the answer reads them (points, the instance box rules)
        needs_instances = box is None or (not text and rule in INSTANCE_BOX_RULES)
        res = run(rgb[y0:y1, x0:x1], concept, needs_instances)
        resolution = res.resolutions[0] if text else None
        if text and not res.resolutions[0].answered:
            return out, 0.0, resolution, "refused"
        mask = res.masks[0]
        wb = (b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0) if box is not None else None
        if text and box is not None:  # the text's category inside the box
            out[y0:y1, x0:x1] = mask & _inside(mask.shape, wb)
            return out, float(res.presence[0]), resolution, f"'{concept}' inside the box"
        labels = res.instances[0] if res.instances is not None else None
        if box is None:
            cx, cy = int(min(max(px - x0, 0), x1 - x0 - 1)), int(min(max(py - y0, 0), y1 - y0 - 1))
            obj = _object_near(labels, mask, cx, cy, inf.geometric_near_um / m_in)
            if obj.any():
                out[y0:y1, x0:x1] = obj
                return out, 1.0, resolution, f"the '{concept}' instance under the point"
            continue
        obj = box_object(labels, mask, wb, rule, inf.geometric_contained_fraction)
        if obj is not None:
            out[y0:y1, x0:x1] = obj
            return out, 1.0, resolution, f"{BOX_RULES[rule]} ('{concept}')"
    return out, 0.0, resolution if text else None, f"no {' or '.join(concepts) or 'instance concept'} under the prompt"


def segment_by_instances(model, rgb: np.ndarray, prompts: list[str], names: list[str], geo_boxes, geo_points,
                         mpp: float | None, run: Callable, estimate=None, *, mask_threshold: float | None = None,
                         presence_threshold: float | None = None):
    """Every row of a ``segment`` call with points/boxes answered by :func:`answer_geometric`; returns the
    :class:`~.result.SegmentationResult` (``probs`` are the binary masks; ``resolutions[i].reason`` says how
    each prompt was answered). ``mask_threshold`` / ``presence_threshold``: the caller's (None: the model's
    ``inference`` defaults); a prompt whose presence is below the presence threshold gets an empty mask."""
    from dataclasses import replace

    from .prompts import geometric
    from .result import SegmentationResult

    h, w = rgb.shape[:2]
    n = len(names)
    answerable = set(model.config.vocabulary) or set(model.config.inference.geometric_concepts)
    masks = np.zeros((n, h, w), bool)
    presence = np.zeros(n, np.float32)
    resolutions = []
    for i in range(n):
        box = geo_boxes[i] if geo_boxes is not None else None
        point = None
        if box is None and geo_points is not None:
            fg = np.nonzero(geo_points[1][i] == 1)[0]
            point = geo_points[0][i][fg[0] if len(fg) else 0]
        text = prompts[i] if prompts else None
        mask, pres, res, how = answer_geometric(model, rgb, text=text, box=box, point=point, mpp=mpp, run=run,
                                                answerable=answerable)
        masks[i], presence[i] = mask, pres
        reason = f"geometric_mode 'instances': {how}"
        resolutions.append(replace(res, reason=(res.reason + "; " if res.reason else "") + reason) if res is not None
                           else replace(geometric(names[i]), reason=reason))
    inf = model.config.inference
    pthr = float(inf.presence_threshold if presence_threshold is None else presence_threshold)
    mthr = float(inf.mask_threshold if mask_threshold is None else mask_threshold)
    masks &= (presence >= pthr)[:, None, None]
    return SegmentationResult(prompts=names, masks=masks, probs=masks.astype(np.float32), presence=presence,
                              image_size=(h, w), mpp=mpp, model=model.name,
                              thresholds={"mask": mthr, "presence": pthr},
                              resolutions=resolutions, instances=None,
                              mpp_estimate=estimate.to_dict() if estimate is not None else None)
