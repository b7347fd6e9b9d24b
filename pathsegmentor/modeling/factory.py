"""timm-style entry points: ``create_model(name)`` (random weights, or ``pretrained=True``) and
``from_pretrained(name_or_dir)`` (local dir, shipped weights, cache, official SAM checkpoint, hub)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .build import build_model
from .config import apply_overrides
from .model import PathSegmentorNetwork
from .registry import get_model_config
from .weights import load_pretrained


def from_pretrained(name_or_dir: str | Path, *, overrides: dict[str, Any] | None = None, device: str | None = None,
                    model_cls: type = PathSegmentorNetwork):
    """Load a model by local dir, registered name or hub id, built as ``model_cls`` (the network;
    :func:`pathsegmentor.from_pretrained` passes :class:`pathsegmentor.PathSegmentor`, the network with ``segment()``);
    see :mod:`pathsegmentor.modeling.weights` for the order in which places are tried and the offline behaviour.
    CellSAM names give a ``CellSAM``."""
    return load_pretrained(name_or_dir, model_cls=model_cls, overrides=overrides, device=device)


def create_model(name: str, *, pretrained: bool = False, overrides: dict[str, Any] | None = None,
                 model_cls: type = PathSegmentorNetwork, **kwargs):
    """Build a registered variant (random weights unless ``pretrained``), as ``model_cls``.

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the variant's weights (see :func:`from_pretrained`).
        overrides: dotted config keys to change, e.g. ``{"mask_decoder.hires": False}``.
    """
    if pretrained:
        return from_pretrained(name, overrides=overrides, model_cls=model_cls, **kwargs)
    cfg = get_model_config(name)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return build_model(cfg, model_cls)
