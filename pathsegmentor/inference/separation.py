"""Instance separation maps: training targets from instance label maps, and the decoders that turn a
predicted mask plus its maps into instances.

The separation head (:class:`pathsegmentor.modeling.mask_decoder.SeparationHead`) predicts three
channels per instance-type prompt:

* ``0, 1`` — **centre offsets** (HoVer-Net's horizontal / vertical maps): for every object pixel, its
  x (resp. y) distance to the object's centre of mass, divided by the largest such distance in that
  object, so values lie in [-1, 1] and jump sharply where two objects touch;
* ``2`` — **border distance** (DIST-style): the Euclidean distance to the object's border divided by
  the object's largest one, in [0, 1], highest at the centre, 0 on the background;
* ``3`` (models with four channels) — the **thick-border class** (contour-aware U-Nets, DCAN): 1 on the
  object pixels within ``BORDER_PX`` pixels of the object's edge (where it meets the background or another
  object), 0 elsewhere. A thick border is what separates touching objects cheaply.

Decoders (:func:`decode_instances`): ``"hv"`` seeds a watershed where the centre offsets change
smoothly (object interiors) and cuts where they jump; ``"distance"`` seeds at the cores where the
predicted border distance is high; ``"border"`` seeds at the mask pixels off the predicted thick border
and grows them back over it; ``"watershed"`` uses only the binary mask (distance transform
h-maxima, :func:`~pathsegmentor.inference.instances.separate_instances`), the decoder of models
without a separation head.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from .instances import drop_small, seed_unseeded, separate_instances

if TYPE_CHECKING:  # pragma: no cover
    from .prompts import PromptResolution

CHANNELS = 3
BORDER_PX = 3.0
DECODERS = ("hv", "distance", "border", "watershed")
MAP_DECODERS = ("auto", "hv", "distance", "border")  # the choices that read the separation maps


def separation_targets(instances: np.ndarray, channels: int = CHANNELS, border_px: float = BORDER_PX) -> np.ndarray:
    """``int [H, W]`` instance ids (0 background) -> ``float32 [channels, H, W]``: centre offsets x, y in
    [-1, 1] and border distance in [0, 1] (0 on the background); with ``channels=4`` also the thick-border
    class (1 on object pixels whose distance to the object's edge is at most ``border_px``). A one-pixel object
    gets offsets 0, distance 1 and border 1."""
    from scipy import ndimage as ndi

    if channels not in (3, 4):
        raise ValueError(f"separation targets have 3 or 4 channels, got {channels}")
    inst = np.asarray(instances)
    h, w = inst.shape
    out = np.zeros((channels, h, w), np.float32)
    if not inst.any():
        return out
    for i, sl in enumerate(ndi.find_objects(inst.astype(np.int32, copy=False)), start=1):
        if sl is None:
            continue
        obj = inst[sl] == i
        if not obj.any():
            continue
        ys, xs = np.nonzero(obj)
        dx = xs - xs.mean()
        dy = ys - ys.mean()
        out[0][sl][obj] = dx / max(np.abs(dx).max(), 1e-6) if np.abs(dx).max() > 0 else 0.0
        out[1][sl][obj] = dy / max(np.abs(dy).max(), 1e-6) if np.abs(dy).max() > 0 else 0.0
        d = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        out[2][sl][obj] = (d / d.max())[obj]
        if channels == 4:
            out[3][sl][obj] = (d <= border_px)[obj]
    return out


def activate(raw: np.ndarray) -> np.ndarray:
    """Raw head outputs ``[..., K, H, W]`` -> maps in their ranges (``tanh`` offsets, ``sigmoid`` distance and
    border)."""
    out = np.empty_like(raw, dtype=np.float32)
    out[..., :2, :, :] = np.tanh(raw[..., :2, :, :])
    out[..., 2:, :, :] = 1.0 / (1.0 + np.exp(-raw[..., 2:, :, :]))
    return out


def instances_from_hv(mask: np.ndarray, offsets: np.ndarray, *, edge: float = 0.25, smooth: float = 1.0,
                      min_area: int = 4) -> np.ndarray:
    """Instances from a mask and predicted centre offsets (HoVer-Net style).

    Args:
        mask: ``bool [H, W]``.
        offsets: ``float [2, H, W]`` in [-1, 1] (x then y).
        edge: a pixel whose offsets fall by more than this per pixel (x along x, or y along y) lies on a
            border between objects; interiors (markers) are mask pixels below it.
        smooth: Gaussian sigma (px) applied to the offsets before differentiating.
    Returns ``int32 [H, W]`` (0 background).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    hx = ndi.gaussian_filter(offsets[0].astype(np.float32), smooth) if smooth else offsets[0]
    vy = ndi.gaussian_filter(offsets[1].astype(np.float32), smooth) if smooth else offsets[1]
    # inside an object the offsets rise by ~2/diameter per px; across a border between two objects they fall
    fall = np.maximum(-np.gradient(hx, axis=1), -np.gradient(vy, axis=0))
    energy = np.clip(fall / max(edge, 1e-6), 0.0, 1.0)
    interior = mask & (energy < 1.0)
    interior = ndi.binary_opening(interior, structure=np.ones((3, 3), bool))
    markers, n = ndi.label(interior)
    markers = drop_small(markers, 3)
    score = (1.0 - energy) * mask
    markers = seed_unseeded(markers, int(markers.max()), mask, score)
    labels = watershed(-ndi.gaussian_filter(score, 1.0), markers, mask=mask).astype(np.int32)
    return drop_small(labels, min_area)


def instances_from_distance(mask: np.ndarray, distance: np.ndarray, *, core: float = 0.45,
                            min_area: int = 4) -> np.ndarray:
    """Instances from a mask and the predicted border distance ``float [H, W]`` in [0, 1]: markers are the
    connected cores where the distance exceeds ``core``; a watershed on the negative distance grows them
    inside the mask. Components without a core are kept as one object each. ``int32 [H, W]``."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = np.where(mask, distance, 0.0).astype(np.float32)
    markers, n = ndi.label(mask & (dist > core))
    markers = drop_small(markers, 2)
    markers = seed_unseeded(markers, int(markers.max()), mask, dist)
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    return drop_small(labels, min_area)


def instances_from_border(mask: np.ndarray, border: np.ndarray, *, threshold: float = 0.5,
                          min_area: int = 4) -> np.ndarray:
    """Instances from a mask and the predicted thick-border probability ``float [H, W]`` in [0, 1]: markers are
    the connected mask pixels off the border (``border < threshold``); a watershed on the border probability
    grows them back over the border inside the mask. Components without a marker are kept as one object each.
    ``int32 [H, W]``."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    b = np.where(mask, border, 1.0).astype(np.float32)
    markers, _ = ndi.label(mask & (b < threshold))
    markers = drop_small(markers, 3)
    markers = seed_unseeded(markers, int(markers.max()), mask, 1.0 - b)
    labels = watershed(b, markers, mask=mask).astype(np.int32)
    return drop_small(labels, min_area)


def decode_instances(mask: np.ndarray, maps: np.ndarray | None, method: str = "auto", *,
                     min_area: int = 4, h: float = 1.5, core: float = 0.45) -> np.ndarray:
    """One instance decoder for ``segment()``, whole slides and evaluation.

    Args:
        mask: ``bool [H, W]`` semantic mask of one instance-type prompt.
        maps: ``float [3 or 4, H, W]`` activated separation maps (:func:`activate`), or None.
        method: ``"auto"`` (``"border"`` with four maps, ``"hv"`` with three, else ``"watershed"``), ``"hv"``,
            ``"distance"``, ``"border"`` (four maps), ``"watershed"``.
        min_area: objects under this many px are dropped (a model's value: ``inference.instance_min_area_px``,
            through :func:`instance_decoding`).
        h: the ``"watershed"`` decoder's seed height (px, :func:`~.instances.separate_instances`;
            ``inference.instance_watershed_h_px``).
    Returns ``int32 [H, W]`` instance ids, 0 background.
    """
    if method == "auto":
        method = "watershed" if maps is None else ("border" if len(maps) > 3 else "hv")
    if method not in DECODERS:
        raise ValueError(f"Unknown instance decoder '{method}'. Available: {['auto', *DECODERS]}")
    if method != "watershed" and maps is None:
        raise ValueError(f"instance decoder '{method}' needs separation maps, and this model predicts none "
                         "(mask_decoder.separation_channels is 0); use 'watershed' or 'auto'")
    if method == "hv":
        return instances_from_hv(mask, maps[:2], min_area=min_area)
    if method == "distance":
        return instances_from_distance(mask, maps[2], core=core, min_area=min_area)
    if method == "border":
        if len(maps) < 4:
            raise ValueError("instance decoder 'border' needs the thick-border map (a model with "
                             "mask_decoder.separation_channels=4); use 'hv', 'distance' or 'auto'")
        return instances_from_border(mask, maps[3], min_area=min_area)
    return separate_instances(mask, h=h, min_area=min_area)


@lru_cache(maxsize=1)
def _ontology():
    from ..ontology import Ontology

    return Ontology.load()


def is_instance_concept(concept: str | None, settings) -> bool:
    """Whether an ontology concept is counted object by object: its object type is one of
    ``settings.instance_object_types`` (:class:`~pathsegmentor.modeling.inference_config.InferenceConfig`)."""
    c = _ontology().categories.get(concept or "")
    return c is not None and c.object_type in tuple(settings.instance_object_types)


def wants_instances(resolution: "PromptResolution | None", settings) -> bool:
    """Whether a prompt's answer is separated into instances: it was answered and the concept it is segmented as
    (:attr:`~.prompts.PromptResolution.segmented_as`) is counted object by object (:func:`is_instance_concept`
    under the inference ``settings``). The one rule of ``segment()``, whole slides and the viewer."""
    return resolution is not None and resolution.answered and is_instance_concept(resolution.segmented_as, settings)


@dataclass(frozen=True)
class InstanceDecoding:
    """How one prompt's mask becomes instances: the decoder ``method`` (:func:`decode_instances`' choices),
    ``min_area`` (px) and the watershed seed height ``h`` (px), both at the resolution the mask is decoded at, and the
    ``"distance"`` decoder's ``core`` threshold."""

    method: str
    min_area: int
    h: float
    core: float

    @property
    def reads_maps(self) -> bool:
        """Whether the decoder reads the separation maps (when the model predicts them)."""
        return self.method in MAP_DECODERS

    def decode(self, mask: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
        """``bool [H, W]`` mask (+ ``float [C, H, W]`` activated maps, or None) -> ``int32 [H, W]`` instance ids."""
        return decode_instances(mask, maps if self.reads_maps else None, self.method, min_area=self.min_area,
                                h=self.h, core=self.core)


def instance_decoding(model_config, concept: str | None, requested: str = "auto",
                      decode_mpp: float | None = None) -> InstanceDecoding:
    """The instance decoder of one prompt, as ``segment()``, whole slides and the viewer all decide it.

    Args:
        model_config: the model's config (``inference``: ``instances``, ``instance_min_area_px``,
            ``instance_watershed_h_px``, ``instance_distance_core``, ``instance_min_object_um2``; ``preprocess``:
            the working µm/px).
        concept: the concept the prompt is segmented as (sets its working µm/px).
        requested: ``segment(instances=...)``: ``"auto"`` takes the model's ``inference.instances``.
        decode_mpp: µm/px of the mask being decoded; None: the concept's working µm/px (``segment()`` decodes
            there), so the settings are the config's working-pixel values; at another µm/px they are scaled to
            the same physical size.
    """
    inf = model_config.inference
    method = str(inf.instances) if requested == "auto" else requested
    if method not in ("auto", *DECODERS):
        raise ValueError(f"instance decoder {method!r} unknown. Available: {['auto', *DECODERS]}; set "
                         f"inference.instances in the model's config.json (or pass instances=... to segment())")
    work = working_mpp(model_config.preprocess, concept)
    mpp = work if decode_mpp is None else float(decode_mpp)
    ratio = work / mpp
    min_px = max(int(inf.instance_min_area_px) * ratio * ratio, min_object_um2(inf, concept) / (mpp * mpp))
    return InstanceDecoding(method, max(1, round(min_px)), float(inf.instance_watershed_h_px) * ratio,
                            distance_core(inf, concept))


def _by_object_type(table: dict[str, float], concept: str | None) -> float:
    """``table``'s value at the concept's ontology object type, else at ``"default"``."""
    c = _ontology().categories.get(concept or "")
    return float(table.get(c.object_type, table["default"]) if c is not None else table["default"])


def distance_core(settings, concept: str | None) -> float:
    """The ``"distance"`` decoder's core for a concept (``settings.instance_distance_core`` by object type)."""
    return _by_object_type(settings.instance_distance_core, concept)


def min_object_um2(settings, concept: str | None) -> float:
    """The smallest instance (µm²) of a concept (``settings.instance_min_object_um2`` by object type)."""
    return _by_object_type(settings.instance_min_object_um2, concept)


def working_mpp(preprocess, concept: str | None) -> float:
    """The µm/px a concept is segmented at: ``preprocess.structure_mpp[structure]``, else ``preprocess.mpp``."""
    table = preprocess.structure_mpp
    c = _ontology().categories.get(concept or "")
    return float(table.get(c.structure, preprocess.mpp)) if c is not None else float(preprocess.mpp)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``int32 [h, w]`` label map to ``size = (H, W)``."""
    h, w = labels.shape
    ys = np.minimum((np.arange(size[0]) + 0.5) * h / size[0], h - 1).astype(np.intp)
    xs = np.minimum((np.arange(size[1]) + 0.5) * w / size[1], w - 1).astype(np.intp)
    return labels[ys[:, None], xs[None, :]].astype(np.int32)
