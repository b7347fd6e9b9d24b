"""Point and box prompts as ``segment()`` takes them: arrays in input pixels, one set per prompt row, refused when
they ask about nothing in the image (:func:`check_inside_image`)."""
from __future__ import annotations

import numpy as np


def geometric_inputs(prompts: list[str], points: np.ndarray | None, point_labels: np.ndarray | None,
                     boxes: np.ndarray | None, size: tuple[int, int]) -> tuple[list[str], np.ndarray | None, tuple | None, int]:
    """(row names, boxes ``float32 [n, 4]`` XYXY or None, points (coords ``float32 [n, P, 2]`` XY, labels
    ``int64 [n, P]``) or None, number of geometric sets given) for ``segment()``'s text ``prompts`` and
    points/boxes in input pixels on an image of ``size = (H, W)``: one set broadcast to every text prompt, or one
    set per prompt; geometric prompts alone are named ``"<geometric prompt i>"``."""
    geo_boxes, geo_points, n_geo = _arrays(points, point_labels, boxes)
    check_inside_image(geo_boxes, geo_points, size)
    n = len(prompts)
    if n == 0:
        n = n_geo
        names = [f"<geometric prompt {i}>" for i in range(n)]
    else:
        names = prompts
        if n_geo not in (0, 1, n):
            raise ValueError(f"{n_geo} point/box sets for {n} text prompts: give one per prompt or one for all")
    if geo_boxes is not None and geo_boxes.shape[0] != n:
        geo_boxes = np.broadcast_to(geo_boxes, (n, 4))
    if geo_points is not None and geo_points[0].shape[0] != n:
        geo_points = (np.broadcast_to(geo_points[0], (n, *geo_points[0].shape[1:])),
                      np.broadcast_to(geo_points[1], (n, geo_points[1].shape[1])))
    return names, geo_boxes, geo_points, n_geo


def check_inside_image(geo_boxes: np.ndarray | None, geo_points: tuple[np.ndarray, np.ndarray] | None,
                       size: tuple[int, int]) -> None:
    """ValueError when a box (XYXY ``[n, 4]``) covers no part of the ``size = (H, W)`` image, or when every point
    of a point set (``[n, P, 2]`` XY) lies outside it: such a prompt asks about nothing in the image."""
    H, W = size
    frame = f"the {W}x{H} image (width x height; x in [0, {W}], y in [0, {H}])"
    if geo_boxes is not None:
        for i, b in enumerate(np.asarray(geo_boxes, np.float64).reshape(-1, 4)):
            if not (b[2] > 0 and b[0] < W and b[3] > 0 and b[1] < H):
                raise ValueError(f"box {i} {[round(float(v), 2) for v in b]} (XYXY, input pixels) lies wholly outside "
                                 f"{frame}; give a box that overlaps the image, in the input's pixel coordinates.")
    if geo_points is not None:
        for i, pts in enumerate(np.asarray(geo_points[0], np.float64)):
            inside = (pts[:, 0] >= 0) & (pts[:, 0] <= W) & (pts[:, 1] >= 0) & (pts[:, 1] <= H)
            if not inside.any():
                raise ValueError(f"point set {i} {[[round(float(v), 2) for v in q] for q in pts]} (XY, input pixels) "
                                 f"lies wholly outside {frame}; give points on the image, in the input's pixel "
                                 f"coordinates.")


def _arrays(points: np.ndarray | None, point_labels: np.ndarray | None,
            boxes: np.ndarray | None) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None, int]:
    """Boxes ``[n, 4]`` and points (``[n, P, 2]``, labels ``[n, P]``) as float32/int64 arrays in input pixels."""
    geo_boxes = geo_points = None
    if boxes is not None:
        geo_boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if points is not None:
        if point_labels is None:
            raise ValueError("points need point_labels (1 foreground, 0 background) of shape [N, P]")
        pc = np.asarray(points, dtype=np.float32)
        pc = pc.reshape(-1, pc.shape[-2], 2) if pc.ndim == 3 else pc.reshape(1, -1, 2)
        pl = np.asarray(point_labels).reshape(pc.shape[0], pc.shape[1]).astype(np.int64)
        geo_points = (pc, pl)
    n_geo = max(x.shape[0] if x is not None else 0 for x in (geo_boxes, geo_points[0] if geo_points else None))
    return geo_boxes, geo_points, n_geo
