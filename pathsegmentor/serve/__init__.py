"""``pathsegmentor serve``: a local web viewer to segment tiles and whole slides by typing.

Modules in data-flow order: ``files`` (what may be opened: the given files, ``--root``, refusals) ->
``sources`` (slides through the slide reader, tiles decoded once) -> ``dzi`` (Deep Zoom tiles from the
pyramid) -> ``cache`` (the server's image-encoding cache, used through the model's predictor) -> ``view`` (segment
a view or region at the model's resolution) -> ``export`` (GeoJSON, mask PNG, objects CSV with the CLI's writers)
-> ``jobs`` (whole-slide runs in the background) -> ``state`` (what the app holds), ``request_body`` ->
``routes_files``, ``routes_tiles``, ``routes_segment``, ``routes_jobs`` -> ``app`` (the Starlette app assembling
the routes) -> ``cli`` (the command);
``static/`` holds the page and the vendored OpenSeadragon. Only :mod:`pathsegmentor.cli` imports this
package, lazily, when ``serve`` runs.
"""
from __future__ import annotations

from typing import Any


def create_app(model: Any, files: Any, **kwargs: Any):
    """See :func:`pathsegmentor.serve.app.create_app`."""
    from .app import create_app as _create

    return _create(model, files, **kwargs)


__all__ = ["create_app"]
