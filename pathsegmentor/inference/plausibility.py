"""Parts of a mask its concept cannot have, removed after thresholding.

A nucleus (or cell) mask is made of nuclei and clusters of touching nuclei. A connected part far larger than
any cluster is something else: pen ink, pigment, folded tissue, debris, which the model can read as dense
haematoxylin. ``inference.max_cell_component_um2`` (0: off) is the largest connected part, in µm², that a
mask of a nucleus/cell concept keeps (QuPath's cell detection has the same kind of limit per nucleus,
``maxAreaMicrons``). The shipped value is set from the training split: see MODEL_CARD.md.
"""
from __future__ import annotations

import numpy as np

from .separation import _ontology

def is_cell_concept(concept: str | None, settings) -> bool:
    """Whether the size limit applies to an ontology concept: its object type is one of the inference
    ``settings.size_limit_object_types`` (nuclei and cells as shipped)."""
    c = _ontology().categories.get(concept or "")
    return c is not None and c.object_type in tuple(settings.size_limit_object_types)


def oversized_parts(mask: np.ndarray, max_px: float) -> np.ndarray:
    """``bool [H, W]``: the connected parts (4-connected) of ``mask`` (``bool [H, W]``) larger than ``max_px``."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(mask)
    if not n:
        return np.zeros(mask.shape, bool)
    big = np.nonzero(np.bincount(labels.ravel())[1:] > max_px)[0] + 1
    return np.isin(labels, big) if big.size else np.zeros(mask.shape, bool)


def drop_oversized(masks: np.ndarray, instances: np.ndarray | None, concepts: list[str | None],
                   um2_per_px: list[float], settings) -> list[float]:
    """Removes, in place, the parts of each cell-concept row of ``masks`` (``bool [N, H, W]``) over
    ``settings.max_cell_component_um2`` µm² (``um2_per_px[i]``: the area of one input pixel of row i) and their
    ``instances`` (``int32 [N, H, W]`` or None). Returns the µm² removed per row (0.0 for rows left alone)."""
    removed = [0.0] * len(masks)
    max_um2 = float(settings.max_cell_component_um2)
    if max_um2 <= 0:
        return removed
    for i, concept in enumerate(concepts):
        if not is_cell_concept(concept, settings) or not masks[i].any():
            continue
        gone = oversized_parts(masks[i], max_um2 / um2_per_px[i])
        if gone.any():
            masks[i] &= ~gone
            if instances is not None:
                instances[i][gone] = 0
            removed[i] = float(gone.sum() * um2_per_px[i])
    return removed
