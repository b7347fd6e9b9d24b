"""Whole-slide inference: ``pathsegmentor.segment_slide(model, path, prompts, out=...)`` and ``pathsegmentor slide``.

Modules in data-flow order: ``reader`` (levels, mpp, regions) -> ``grid`` (working grid at the
model's mpp) -> ``tissue`` (thumbnail mask) -> ``bands`` (row bands, part files, streaming merge) ->
``infer`` (orchestration), with ``resume`` (state, ``out`` check) and ``processes`` (rank split) ->
``predict`` (one band of tiles) -> ``finalize`` (the per-prompt output pass) -> ``writer``
(pyramidal TIFF) -> ``instances`` (objects, measurements, region polygons) -> ``geojson`` (QuPath
export) -> ``summary``; ``cli`` is the command line, ``synthetic`` writes test and benchmark slides.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .finalize import SlideResult


def segment_slide(model, path, prompts, **kwargs: Any) -> "SlideResult | None":
    """Segment a whole-slide image with ``model``; see :func:`pathsegmentor.slide.infer.segment_slide`
    (``out=`` is required: results are written there, streamed, never held whole in memory)."""
    from .infer import segment_slide as _run

    if "out" not in kwargs:
        raise TypeError("segment_slide needs out=DIR: slide outputs are streamed to disk "
                        "(pyramidal TIFF per prompt, objects table, GeoJSON, summary.json).")
    out = kwargs.pop("out")
    return _run(model, path, prompts, out, **kwargs)


__all__ = ["segment_slide"]
