"""One predictor above the network: ``segment()``, whole slides, the web viewer and evaluation all go through it.

A :class:`Predictor` owns what inference needs besides the weights: the network (passed in), the resolved
:class:`~pathsegmentor.modeling.inference_config.InferenceConfig` (the model's own, or one given), the prompt resolver
(built once), and the caches (image encodings per window here, text embeddings in the text tower). It calls the
network (``encode_text``, ``encode_window`` / ``decode_window``); the network never calls it. This module imports
nothing from :mod:`pathsegmentor.modeling`: the network is passed in (segment-anything keeps ``Sam`` below
``SamPredictor`` the same way).

>>> from pathsegmentor import PathSegmentor
>>> model = PathSegmentor.from_pretrained("pathsegmentor-tiny")
>>> model.segment("tile.png", "tumor nuclei", mpp=0.25)          # model.predictor.segment(...)
>>> strict = Predictor(model, settings=replace(model.config.inference, presence_threshold=0.6))
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .embedding_cache import EmbeddingCache

if TYPE_CHECKING:  # pragma: no cover
    from ..modeling.inference_config import InferenceConfig
    from .image_io import ImageInput
    from .prompts import PromptResolution, PromptResolver
    from .result import SegmentationResult


class _Prediction:
    """A window prediction of a network that only has ``predict_window`` (probabilities and presence)."""

    def __init__(self, probs: np.ndarray, presence: np.ndarray) -> None:
        self.probs, self.presence, self.separation = probs, presence, None


class Predictor:
    """Inference over a network: images, tiles, thresholds, presence gate, instances, size limit.

    Args:
        network: a :class:`~pathsegmentor.modeling.model.PathSegmentorNetwork` (or anything with its ``config``,
            ``encode_text`` and ``encode_window``/``decode_window``, or ``predict_window``).
        settings: the inference rules; None: the network's own ``config.inference`` (read live, so editing it
            takes effect at once).
        cache_bytes: size of the image-encoding cache (0: none); ``cache`` shares an existing one instead.
    """

    def __init__(self, network: Any, settings: "InferenceConfig | None" = None, *, cache_bytes: int = 256 << 20,
                 cache: EmbeddingCache | None = None, _resolver: "PromptResolver | None" = None,
                 _resolver_key: tuple | None = None) -> None:
        if settings is not None:
            settings.check()
        self.network = network
        self._settings = settings
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self._resolver = _resolver
        self._resolver_key = _resolver_key  # (vocabulary concepts, prompt_similarity) the resolver was built for
        self.encoded = self.reused = 0  # windows encoded / answered from the cache by this predictor

    # ------------------------------------------------------------------ what the network and its settings are
    @property
    def config(self) -> Any:
        """The network's config, with :attr:`settings` as its ``inference`` section."""
        cfg = self.network.config
        return cfg if self._settings is None else dataclasses.replace(cfg, inference=self._settings)

    @property
    def settings(self) -> "InferenceConfig":
        """The inference rules this predictor applies."""
        return self.config.inference

    @property
    def name(self) -> str:
        return str(getattr(self.network, "name", "model"))

    @property
    def device(self) -> Any:
        return getattr(self.network, "device", "cpu")

    @property
    def has_separation(self) -> bool:
        return bool(getattr(self.network, "has_separation", False))

    def with_cache(self, cache: EmbeddingCache | None) -> "Predictor":
        """The same network, settings and prompt resolver over another image-encoding cache (None: no cache)."""
        return Predictor(self.network, self._settings, cache=cache if cache is not None else EmbeddingCache(0),
                         _resolver=self._resolver, _resolver_key=self._resolver_key)

    # ------------------------------------------------------------------ prompts
    @property
    def resolver(self) -> "PromptResolver":
        """The prompt resolver (built once, and again only if the vocabulary or ``prompt_similarity`` change): the
        package ontology, the network's text tower and vocabulary, the nearest-step threshold
        ``settings.prompt_similarity`` (0: calibrated on the ontology)."""
        key = (tuple(sorted(self.config.vocabulary)), float(self.settings.prompt_similarity))
        if self._resolver is None or self._resolver_key != key:
            from ..ontology import Ontology
            from ..resources import cache_dir
            from .prompts import PromptResolver

            self._resolver = PromptResolver(Ontology.load(), self.network.text_encoder.encode,
                                            dict(self.config.vocabulary), key[1] or None,
                                            index_dir=cache_dir() / "prompt_index")
        self._resolver_key = key
        return self._resolver

    def resolve(self, prompts: Sequence[str], vocabulary: str = "model") -> "list[PromptResolution]":
        """Each phrase grounded in the ontology and the model's vocabulary (``"open"``: raw text, looked up only)."""
        from .prompts import check_vocabulary, lookup_only

        check_vocabulary(vocabulary)
        if vocabulary == "open":
            return lookup_only().resolve_all(prompts, "open")
        return self.resolver.resolve_all(prompts, vocabulary)

    def encode_text(self, phrases: Sequence[str]):
        """``[N, D]`` text embeddings (the network's template applied; cached per string by the text tower)."""
        return self.network.encode_text(list(phrases))

    # ------------------------------------------------------------------ windows
    def _encoding_state(self) -> tuple:
        """What an image encoding depends on besides the pixels: the weights and buffers (their identities and a sum
        of their in-place version counters, which changes with every optimiser step, ``load_state_dict`` or BatchNorm
        statistics re-estimated in place), the device, train/eval mode, and an encoder mode (CellSAM's teacher /
        student / fused)."""
        net = self.network
        params = [*net.parameters(), *net.buffers()] if callable(getattr(net, "parameters", None)) else []
        return (sum(p._version for p in params), sum(id(p) for p in params), str(self.device),
                bool(getattr(net, "training", False)), str(getattr(getattr(net, "image_encoder", None), "mode", "")))

    def encode_window(self, window: np.ndarray):
        """The network's ``encode_window(window)``, answered from the cache for the same pixels and weights."""
        window = np.ascontiguousarray(window)
        if self.cache.max_bytes == 0:  # no cache (whole slides): no digest, no key on the hot path
            self.encoded += 1
            return self.network.encode_window(window)
        key = (id(self.network), self._encoding_state(), window.shape,
               hashlib.blake2b(window.data, digest_size=16).hexdigest())
        enc = self.cache.get(key)
        if enc is None:
            enc = self.network.encode_window(window)
            self.cache.put(key, enc)
            self.encoded += 1
        else:
            self.reused += 1
        return enc

    def predict_window_maps(self, window: np.ndarray, text_emb, points, boxes, hires: bool | None,
                            separation: bool = False):
        """One window ``uint8 [h, w, 3]`` at the working µm/px, N prompts -> ``WindowPrediction`` (probs
        ``[N, h, w]`` in [0, 1], presence ``[N]``, separation maps ``[N, C, h, w]`` or None): one encoding (cached)
        for all N prompts."""
        import torch

        net = self.network
        with torch.no_grad():
            if hasattr(net, "encode_window"):
                return net.decode_window(self.encode_window(window), text_emb, points, boxes, hires, separation)
            if hasattr(net, "predict_window_maps"):
                return net.predict_window_maps(window, text_emb, points, boxes, hires, separation=separation)
            return _Prediction(*net.predict_window(window, text_emb, points, boxes, hires))

    def predict_window(self, window: np.ndarray, text_emb, points, boxes, hires: bool | None):
        """(probs ``float32 [N, h, w]``, presence ``float32 [N]``) of one window: see :meth:`predict_window_maps`."""
        pred = self.predict_window_maps(window, text_emb, points, boxes, hires)
        return pred.probs, pred.presence

    # ------------------------------------------------------------------ images
    def segment(self, image: "ImageInput", prompts: str | Sequence[str] | None = None,
                **kwargs) -> "SegmentationResult":
        """Segment whatever each prompt names: the arguments of :meth:`SegmentMixin.segment`."""
        from .segment import segment_image

        return segment_image(self, image, prompts, **kwargs)


def as_predictor(model: Any) -> Predictor:
    """``model`` as a :class:`Predictor`: itself if it is one, else the one predictor kept with that network (built
    on first use and stored in the network's ``__dict__`` as ``_predictor``, so its prompt resolver and caches are
    built once per network and go away with it; the network never reads it)."""
    if isinstance(model, Predictor):
        return model
    slots = getattr(model, "__dict__", None)
    if slots is None:  # an object without attributes of its own: a fresh predictor
        return Predictor(model)
    p = slots.get("_predictor")
    if p is None or p.network is not model:  # (a shallow copy of a network gets its own)
        p = slots["_predictor"] = Predictor(model)
    return p


class SegmentMixin:
    """``segment()`` on a network class (:class:`pathsegmentor.PathSegmentor`, CellSAM): delegated to its
    :attr:`predictor`. The network class itself stays below the inference layer."""

    @property
    def predictor(self) -> Predictor:
        """This network's :class:`Predictor` (one per network; its settings are ``config.inference``, live)."""
        return as_predictor(self)

    def segment(self, image: "ImageInput", prompts: str | Sequence[str] | None = None, *,
                mpp: float | str | None = None, points: np.ndarray | None = None,
                point_labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
                mask_threshold: float | None = None, presence_threshold: float | None = None,
                hires: bool | None = None, tile_overlap: int | None = None, progress: bool = False,
                vocabulary: str = "model", instances: str = "auto", tta: bool = False) -> "SegmentationResult":
        """Segment whatever each prompt names.

        Args:
            image: path, PIL image, numpy ``HxW``/``HxWxC`` (uint8/uint16/float) or torch ``CxHxW``.
            prompts: a phrase or a list of N phrases (canonical names or synonyms, e.g. "tumor nuclei").
            mpp: microns per pixel of ``image``, or ``"auto"`` (estimated and reported); when known, the image is
                rescaled to each prompt's working µm/px (``config.preprocess.structure_mpp``, e.g. nuclei at 0.25)
                and masks are mapped back to the input size. Without it nothing is rescaled.
            points: ``[N, P, 2]`` XY in input pixels with ``point_labels [N, P]`` (1 fg, 0 bg).
            boxes: ``[N, 4]`` (or ``[4]``) XYXY in input pixels. Geometric prompts combine with text (one set per
                text prompt, or one set broadcast to all) or replace it; a point/box wholly outside the image is
                refused with the image's size.
            mask_threshold / presence_threshold: override ``config.inference`` for this call (probabilities).
            hires: switch the high-resolution mask path for this call (non-dense models).
            tile_overlap: overlap in model pixels between tiles of a large image.
            progress: a progress bar over tiles.
            vocabulary: ``"model"`` (default): each phrase is grounded in the ontology and answered only for
                concepts this model was trained on (or a trained relative, said so); other phrases get an empty
                mask, presence 0 and the reason (``res.resolutions``). ``"open"``: raw text to the text tower.
            instances: instance decoder for nuclei/cell/gland prompts (``res.instances``): ``"auto"`` (the
                model's ``inference.instances``), ``"hv"``, ``"distance"``, ``"border"``, ``"watershed"``, or
                ``"none"``.
            tta: average over horizontal and vertical flips (3x the cost).

        Returns:
            :class:`~pathsegmentor.inference.result.SegmentationResult` with ``masks bool [N, H, W]`` at the
            input's full resolution, ``probs float32 [N, H, W]`` in [0, 1], ``presence float32 [N]``.
        """
        return self.predictor.segment(image, prompts, mpp=mpp, points=points, point_labels=point_labels, boxes=boxes,
                                      mask_threshold=mask_threshold, presence_threshold=presence_threshold,
                                      hires=hires, tile_overlap=tile_overlap, progress=progress,
                                      vocabulary=vocabulary, instances=instances, tta=tta)
