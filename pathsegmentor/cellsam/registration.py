"""CellSAM plugs into the model registry from its own side (entry point ``dual`` in the
``pathsegmentor.image_encoders`` group, see :mod:`pathsegmentor.modeling.plugins`)."""
from __future__ import annotations


def register() -> None:
    """Register the ``dual`` image encoder (teacher + student) and its model class, :class:`CellSAM`."""
    from ..modeling.plugins import register_image_encoder
    from .dual_encoder import build_dual_encoder
    from .model import CellSAM

    register_image_encoder("dual", build_dual_encoder, model_class=CellSAM)
