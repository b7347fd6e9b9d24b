"""PathSegmentor: text-prompted segmentation of pathology images.

>>> from pathsegmentor import PathSegmentor
>>> model = PathSegmentor.from_pretrained("pathsegmentor-tiny")
>>> res = model.segment("tile.png", ["tumor nuclei", "gland"], mpp=0.25)
>>> res.masks.shape  # (2, H, W)

Importing this package is light: torch, segment_anything, timm, transformers and open_clip are
imported when a model is built, not here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["PathSegmentor", "SegmentationResult", "create_model", "list_models", "from_pretrained",
           "load_sam_checkpoint", "ModelConfig", "__version__"]

_LAZY = {
    "PathSegmentor": ("pathsegmentor.model", "PathSegmentor"),
    "SegmentationResult": ("pathsegmentor.result", "SegmentationResult"),
    "create_model": ("pathsegmentor.registry", "create_model"),
    "list_models": ("pathsegmentor.registry", "list_models"),
    "from_pretrained": ("pathsegmentor.weights", "from_pretrained"),
    "load_sam_checkpoint": ("pathsegmentor.weights", "load_sam_checkpoint"),
    "ModelConfig": ("pathsegmentor.config", "ModelConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'pathsegmentor' has no attribute '{name}'")


if TYPE_CHECKING:  # pragma: no cover
    from .config import ModelConfig
    from .model import PathSegmentor
    from .registry import create_model, list_models
    from .result import SegmentationResult
    from .weights import from_pretrained, load_sam_checkpoint
