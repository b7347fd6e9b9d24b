"""Image-encoder families that live outside ``modeling/`` and plug in from their own side.

The registry and the image-encoder builder know the built-in types (``sam``, ``timm``); any other
``image_encoder.type`` is looked up here. A family registers a builder (``(ImageEncoderConfig,
img_size) -> nn.Module``) and, if its models need more than :class:`PathSegmentorNetwork`, the model class::

    # my_package/registration.py
    from pathsegmentor.modeling.plugins import register_image_encoder
    def register() -> None:
        register_image_encoder("my_type", build_my_encoder, model_class=MyModel)

and declares it as an entry point, named by the type, in the ``pathsegmentor.image_encoders`` group
(``setup.cfg``: ``my_type = my_package.registration:register``). CellSAM's ``dual`` encoder is
registered this way by :mod:`pathsegmentor.cellsam.registration`; this module imports nothing of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

ENTRY_POINT_GROUP = "pathsegmentor.image_encoders"


@dataclass(frozen=True)
class EncoderFamily:
    type: str
    build: Callable[..., Any]
    model_class: type | None = None


_FAMILIES: dict[str, EncoderFamily] = {}


def register_image_encoder(type_: str, build: Callable[..., Any], *, model_class: type | None = None) -> None:
    """Register (or replace) the builder and optional model class of ``image_encoder.type == type_``."""
    _FAMILIES[type_] = EncoderFamily(type_, build, model_class)


def _entry_points(name: str | None = None) -> list:
    from importlib.metadata import entry_points

    eps = list(entry_points(group=ENTRY_POINT_GROUP))
    return [e for e in eps if name is None or e.name == name]


def registered_types() -> list[str]:
    """Types registered now or declared by an installed entry point, sorted."""
    return sorted(set(_FAMILIES) | {e.name for e in _entry_points()})


def get_family(type_: str, *, builtin: tuple[str, ...] = ()) -> EncoderFamily:
    """The family of ``type_``, loading its entry point on first use.

    Raises:
        ValueError: naming the type, the valid choices and the fix.
    """
    if type_ not in _FAMILIES:
        for ep in _entry_points(type_):
            ep.load()()
    if type_ not in _FAMILIES:
        choices = sorted(set(builtin) | set(registered_types()))
        fix = ("reinstall pathsegmentor (`pip install -e .`) so its entry points are registered, or call "
               "pathsegmentor.cellsam.registration.register()" if type_ == "dual" else
               f"register it with pathsegmentor.modeling.plugins.register_image_encoder('{type_}', ...) or an "
               f"entry point in the '{ENTRY_POINT_GROUP}' group")
        raise ValueError(f"Unknown image encoder type '{type_}'. Available: {choices}. Fix: use one of them, or {fix}.")
    return _FAMILIES[type_]
