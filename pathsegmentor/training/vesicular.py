"""Synthetic vesicular nuclei: real training nuclei with their chromatin cleared from the centre.

Large tumour nuclei in many carcinomas are *vesicular*: the chromatin is pushed against the nuclear membrane, so
the nucleus is a dark rim around a pale centre, often with one dark nucleolus. Every model this project trained
(and a MoNuSeg-only U-Net) misses or half-covers such nuclei, and the training tiles have few of them: stronger
stain jitter does not make them, because it changes a whole nucleus' density, not where its chromatin sits
(``bench/stain_augment.py``). :func:`hollow_nuclei` makes them from the crop's own labelled nuclei: inside a
chosen nucleus the haematoxylin density is scaled down toward its centre (the rim kept, a soft transition, a
little granular texture), sometimes keeping a dark nucleolus at the centre. The labels are unchanged: a
vesicular nucleus is still a nucleus, whole.

Every draw comes from the generator passed in, so a crop's augmentation is a pure function of (seed, position)
and exact resume holds.
"""
from __future__ import annotations

import numpy as np

from .augment import check_chance, range_pair, stain_concentrations, stain_image

__all__ = ["check_vesicular", "hollow_nuclei", "vesicular_crop"]


def check_vesicular(prob: float, fraction: float, centre) -> tuple[float, float]:
    """Validate a recipe's ``data.vesicular_prob`` (chance per crop, [0, 1]), ``data.vesicular_fraction`` (share of
    the crop's nuclei hollowed, (0, 1]) and ``data.vesicular_centre`` (``[low, high]``: the share of haematoxylin
    kept at a hollowed nucleus' centre, 0 <= low <= high <= 1); returns the centre range."""
    lo, hi = range_pair("vesicular_centre", centre, "[0.2, 0.6]")
    check_chance("vesicular_prob", prob, "0.3")
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"data.vesicular_fraction={fraction}: the share of a crop's nuclei hollowed must lie in "
                         "(0, 1] (e.g. 0.5)")
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"data.vesicular_centre={[lo, hi]}: the haematoxylin kept at the centre must be a range "
                         "0 <= low <= high <= 1 (e.g. [0.2, 0.6]; 1 keeps the nucleus as it is)")
    return lo, hi


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def relative_depth(instances: np.ndarray) -> np.ndarray:
    """``float32 [H, W]`` in [0, 1]: each nucleus pixel's distance to its own border (or to a touching nucleus),
    divided by the largest such distance in that nucleus (1 at its centre); 0 outside nuclei.
    ``instances``: ``int [H, W]`` ids, 0 background."""
    from scipy import ndimage as ndi

    inst = np.asarray(instances)
    edge = np.zeros(inst.shape, bool)
    edge[:-1] |= inst[:-1] != inst[1:]
    edge[1:] |= inst[1:] != inst[:-1]
    edge[:, :-1] |= inst[:, :-1] != inst[:, 1:]
    edge[:, 1:] |= inst[:, 1:] != inst[:, :-1]
    depth = ndi.distance_transform_edt((inst > 0) & ~edge).astype(np.float32)
    ids = np.unique(inst[inst > 0])
    if not len(ids):
        return np.zeros(inst.shape, np.float32)
    top = np.zeros(int(ids.max()) + 1, np.float32)
    top[ids] = np.asarray(ndi.maximum(depth, inst, ids), np.float32)
    return np.where(inst > 0, depth / np.maximum(top[inst], 1.0), 0.0).astype(np.float32)


def hollow_nuclei(image: np.ndarray, instances: np.ndarray, rng: np.random.Generator, *, fraction: float = 0.5,
                  centre: tuple[float, float] = (0.2, 0.6), grain: float = 0.15, nucleolus_prob: float = 0.5
                  ) -> np.ndarray:
    """Make some of a crop's nuclei vesicular.

    ``image uint8 [H, W, 3]`` RGB; ``instances int [H, W]`` the crop's nucleus ids (0 background), aligned with it.
    Each nucleus is chosen with probability ``fraction``; inside a chosen one the haematoxylin optical density is
    multiplied by ``1 - (1 - k) * w``, with ``k`` drawn from ``centre`` per nucleus (the share kept at the centre)
    and ``w`` rising smoothly from 0 on the outer quarter of the nucleus' depth (the rim, kept) to 1 beyond two
    thirds; ``grain`` the relative strength of smoothed noise on the cleared part; with probability
    ``nucleolus_prob`` the deepest tenth of the nucleus keeps its density (a nucleolus). The residual third
    channel is scaled as haematoxylin and eosin half as much, so the cleared centre turns pale rather than
    brown. Returns a new ``uint8 [H, W, 3]``; pixels outside chosen nuclei come back within rounding of the
    input, and an input without nuclei comes back unchanged.
    """
    from scipy import ndimage as ndi

    inst = np.asarray(instances)
    ids = np.unique(inst[inst > 0])
    chosen = ids[rng.random(len(ids)) < fraction] if len(ids) else ids
    if not len(chosen):
        return image
    top = int(ids.max()) + 1
    keep = np.ones(top, np.float32)
    keep[chosen] = rng.uniform(centre[0], centre[1], len(chosen)).astype(np.float32)
    nucleolus = np.zeros(top, np.float32)
    nucleolus[chosen] = (rng.random(len(chosen)) < nucleolus_prob).astype(np.float32)
    depth = relative_depth(inst)
    w = _smoothstep(depth, 0.25, 0.65) * (1.0 - nucleolus[inst] * _smoothstep(depth, 0.85, 0.95))
    w = np.where(inst > 0, w, 0.0)
    noise = ndi.gaussian_filter(rng.standard_normal(inst.shape).astype(np.float32), 1.0)
    noise /= max(float(noise.std()), 1e-6)
    factor = 1.0 - (1.0 - keep[inst]) * w
    factor = np.clip(factor * (1.0 + grain * noise * w), 0.0, None)
    hed = stain_concentrations(image)
    hed[..., 0] *= factor
    hed[..., 2] *= factor  # the residual third channel follows H: cleared chromatin turns pale, not brown
    hed[..., 1] *= 0.5 * (1.0 + factor)
    out = stain_image(hed)
    touched = factor != 1.0
    return np.where(touched[..., None], out, image)


def vesicular_crop(image: np.ndarray, instances: dict[str, np.ndarray], ontology, rng: np.random.Generator,
                   prob: float, fraction: float, centre: tuple[float, float]) -> np.ndarray:
    """With chance ``prob``, :func:`hollow_nuclei` on a training crop, read from its widest nucleus instance map
    (``instances``: label -> ``int [H, W]``; a label counts when ``ontology`` gives it the ``nuclei`` structure);
    otherwise, or without nuclei, the image as it is."""
    if rng.random() >= prob or ontology is None:
        return image
    maps = [m for lb, m in instances.items()
            if lb in ontology.categories and ontology.categories[lb].structure == "nuclei"]
    if not maps:
        return image
    widest = max(maps, key=lambda m: int(np.count_nonzero(m)))
    return hollow_nuclei(image, widest, rng, fraction=fraction, centre=centre)
