"""The user-facing model: :class:`PathSegmentor` is the network (:mod:`pathsegmentor.modeling`) with ``segment()``
(:mod:`pathsegmentor.inference`, through its :class:`~pathsegmentor.inference.predictor.Predictor`).

>>> from pathsegmentor import PathSegmentor
>>> model = PathSegmentor.from_pretrained("pathsegmentor-tiny")
>>> res = model.segment("tile.png", "tumor nuclei", mpp=0.25)

This module sits above both layers; the network never imports the inference layer, and the predictor calls the
network, never the other way round.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .inference.predictor import SegmentMixin
from .modeling import factory
from .modeling.model import PathSegmentorNetwork

__all__ = ["PathSegmentor", "create_model", "from_pretrained"]


class PathSegmentor(SegmentMixin, PathSegmentorNetwork):
    """Text-prompted segmentation model: :class:`~pathsegmentor.modeling.model.PathSegmentorNetwork` (weights,
    ``encode_image``/``encode_text``/``decode``, ``forward`` for training) plus :meth:`segment` and its
    :attr:`predictor` (inference settings ``config.inference``, prompt resolver, caches)."""


def from_pretrained(name_or_dir: str | Path, *, overrides: dict[str, Any] | None = None, device: str | None = None):
    """:meth:`PathSegmentor.from_pretrained`: a registered name, a local dir or a hub id (CellSAM names: a CellSAM)."""
    return factory.from_pretrained(name_or_dir, overrides=overrides, device=device, model_cls=PathSegmentor)


def create_model(name: str, *, pretrained: bool = False, overrides: dict[str, Any] | None = None, **kwargs):
    """A registered variant as a :class:`PathSegmentor` (random weights unless ``pretrained``); see
    :func:`pathsegmentor.modeling.factory.create_model`."""
    return factory.create_model(name, pretrained=pretrained, overrides=overrides, model_cls=PathSegmentor, **kwargs)
