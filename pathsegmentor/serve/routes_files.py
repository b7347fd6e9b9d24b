"""Routes of the page and the files: ``GET /`` (the page), ``GET /api/files`` (what may be opened, the
model, the file opened first), ``POST /api/open`` (open a file), and the ``/static`` mount."""
from __future__ import annotations

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .request_body import body_of
from .state import ServerState

STATIC_DIR = Path(__file__).resolve().parent / "static"


def file_routes(state: ServerState) -> list[BaseRoute]:
    """``/``, ``/api/files`` and ``POST /api/open`` for ``state``."""

    def index(request: Request):
        return FileResponse(STATIC_DIR / "index.html")

    def list_files(request: Request):
        return JSONResponse({"files": [{"name": f.name, "kind": f.kind} for f in state.files.list()],
                             "model": state.model_info(), "root": str(state.files.root) if state.files.root else None,
                             "initial": state.files.initial})

    async def open_file(request: Request):
        body = await body_of(request)
        img = await run_in_threadpool(state.open, body.get("file"))
        return JSONResponse(img.info())

    return [
        Route("/", index),
        Route("/api/files", list_files),
        Route("/api/open", open_file, methods=["POST"]),
    ]


def static_mount() -> Mount:
    """``/static``: the page's scripts, styles and the vendored OpenSeadragon."""
    return Mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
