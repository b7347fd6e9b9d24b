"""PathSegmentor: text-prompted segmentation of pathology images.

>>> from pathsegmentor import PathSegmentor
>>> model = PathSegmentor.from_pretrained("pathsegmentor-tiny")
>>> res = model.segment("tile.png", ["tumor nuclei", "gland"], mpp=0.25)
>>> res.masks.shape  # (2, H, W)
>>> segment_slide(model, "slide.svs", ["nuclei", "stroma"], out="slide_out/")  # streamed to disk

Importing this package is light: torch, segment_anything, timm, transformers and open_clip are
imported when a model is built, not here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["PathSegmentor", "Predictor", "InferenceConfig", "SegmentationResult", "create_model", "list_models",
           "from_pretrained",
           "load_sam_checkpoint", "segment_slide", "ModelConfig", "__version__"]

_LAZY = {
    "PathSegmentor": ("pathsegmentor.segmentor", "PathSegmentor"),
    "Predictor": ("pathsegmentor.inference.predictor", "Predictor"),
    "InferenceConfig": ("pathsegmentor.modeling.inference_config", "InferenceConfig"),
    "SegmentationResult": ("pathsegmentor.inference.result", "SegmentationResult"),
    "create_model": ("pathsegmentor.segmentor", "create_model"),
    "list_models": ("pathsegmentor.modeling.registry", "list_models"),
    "from_pretrained": ("pathsegmentor.segmentor", "from_pretrained"),
    "load_sam_checkpoint": ("pathsegmentor.modeling.weights", "load_sam_checkpoint"),
    "ModelConfig": ("pathsegmentor.modeling.config", "ModelConfig"),
    "segment_slide": ("pathsegmentor.slide", "segment_slide"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'pathsegmentor' has no attribute '{name}'")


if TYPE_CHECKING:  # pragma: no cover
    from .modeling.config import ModelConfig
    from .segmentor import PathSegmentor, create_model, from_pretrained
    from .inference.predictor import Predictor
    from .modeling.inference_config import InferenceConfig
    from .modeling.registry import list_models
    from .inference.result import SegmentationResult
    from .modeling.weights import load_sam_checkpoint
    from .slide import segment_slide
