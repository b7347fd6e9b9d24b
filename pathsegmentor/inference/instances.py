"""Instance separation of a binary cell/nucleus mask (shared by evaluation and whole-slide analysis)."""
from __future__ import annotations

import numpy as np


def separate_instances(mask: np.ndarray, *, h: float = 1.5, min_area: int = 4) -> np.ndarray:
    """``bool [H, W]`` -> ``int32 [H, W]`` instance ids (0 background): marker watershed on the
    negative distance transform, seeded at its h-maxima (regional maxima at least ``h`` px above
    their surroundings) so touching round objects split at their neck while an elongated object's
    flat distance ridge stays one seed. Every component gets a seed; objects under ``min_area`` px
    are dropped."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    markers, n = ndi.label(h_maxima(dist, h) > 0, structure=np.ones((3, 3), bool))
    markers = seed_unseeded(markers, n, mask, dist)
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    return drop_small(labels, min_area)


def seed_unseeded(markers: np.ndarray, n: int, mask: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Every connected component of ``mask`` without a marker gets one (id ``n+1``, ...) at its highest
    ``score``, so no object is lost by a marker-controlled watershed."""
    from scipy import ndimage as ndi

    comps, nc = ndi.label(mask)
    if nc == 0:
        return markers
    seeded = np.zeros(nc + 1, bool)
    seeded[np.unique(comps[markers > 0])] = True
    for cid in np.nonzero(~seeded[1:])[0] + 1:
        idx = np.argmax(np.where(comps == cid, score, -np.inf))
        n += 1
        markers.flat[idx] = n
    return markers


def drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Objects of ``labels`` under ``min_area`` px set to 0 (in place)."""
    if min_area > 1 and labels.any():
        areas = np.bincount(labels.ravel())
        small = np.nonzero(areas < min_area)[0]
        small = small[small > 0]
        if small.size:
            labels[np.isin(labels, small)] = 0
    return labels
