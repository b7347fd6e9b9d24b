"""The viewer's web application (Starlette): the page, the static files and the JSON/image API.

Endpoints (all errors are JSON ``{"error": message}`` with a 4xx status; the page shows the message):

``GET /``                                          the page (``static/index.html``)
``GET /api/files``                                 the files this server may open, the model, and ``initial``:
                                                   the file the page opens at once (the first one given)
``POST /api/open`` ``{"file"}``                    open a file: size, mpp, levels, DZI URL
``GET /api/images/{id}.dzi``                       Deep Zoom descriptor
``GET /api/images/{id}_files/{level}/{col}_{row}.jpeg``  a DZI tile, cut from the pyramid
``POST /api/segment`` ``{"image", "prompts", "region", "box", "points"}``  segment a view or region
``GET /api/results/{rid}/overlay/{k}.png``         prompt ``k``'s overlay (RGBA, working resolution)
``GET /api/results/{rid}/export.geojson``          QuPath GeoJSON; ``objects.csv``; ``mask/{k}.png``
``POST /api/jobs`` ``{"image", "prompts"}``        whole-slide job; ``GET``/``DELETE /api/jobs/{jid}``
``GET /api/jobs/{jid}/files/{name}``               a job output (pyramidal TIFF, GeoJSON, CSV, summary)
``GET /api/jobs/{jid}/overlay/{k}.dzi``            a job's mask as a Deep Zoom overlay layer (PNG tiles)
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from .files import FileRegistry, ServeError
from .request_body import MAX_BODY
from .state import ServerState

__all__ = ["MAX_BODY", "ServerState", "create_app"]


async def _on_error(request, exc: ServeError):
    """A refused request: ``{"error": message}`` with the refusal's status."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _on_crash(request, exc: Exception):
    """Anything else: ``{"error": "internal error: ..."}`` with status 500."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def create_app(model: Any, files: FileRegistry, *, mpp: float | None = None, workdir: str | Path | None = None):
    """The Starlette app serving ``files`` with ``model`` (a :class:`~pathsegmentor.PathSegmentor`).
    ``mpp`` overrides or supplies the level-0 microns per pixel of every opened file.

    Routes, in matching order: the page and files (:mod:`.routes_files`), Deep Zoom tiles
    (:mod:`.routes_tiles`), segmenting a view and its results (:mod:`.routes_segment`), whole-slide jobs
    (:mod:`.routes_jobs`), then ``/static``."""
    from starlette.applications import Starlette

    from .routes_files import file_routes, static_mount
    from .routes_jobs import job_routes
    from .routes_segment import segment_routes
    from .routes_tiles import tile_routes

    state = ServerState(model, files, mpp=mpp, workdir=workdir)
    routes = [*file_routes(state), *tile_routes(state), *segment_routes(state), *job_routes(state), static_mount()]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.jobs.close()

    app = Starlette(routes=routes, exception_handlers={ServeError: _on_error, Exception: _on_crash},
                    lifespan=lifespan)
    app.state.serve = state
    return app
