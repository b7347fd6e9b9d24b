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
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .cache import EmbeddingCache
from .dzi import dzi_xml, encode, render_tile
from .export import geojson_bytes, mask_png_bytes, objects_csv_bytes
from .files import FileRegistry, ServeError
from .jobs import JobManager
from .sources import OpenedImage, open_image
from .view import Region, ViewResult, segment_view

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20  # JSON requests; the viewer takes no uploads


class ServerState:
    """What the app holds: the model, the files, open images, results (LRU) and jobs."""

    def __init__(self, model: Any, files: FileRegistry, *, mpp: float | None = None,
                 workdir: str | Path | None = None, max_results: int = 32) -> None:
        from ..inference.prompts import resolver_for

        self.model, self.files, self.mpp = model, files, mpp
        resolver_for(model)  # the prompt resolver, built once for the server's life (kept on the model)
        self.cache = EmbeddingCache()
        self.images: dict[str, OpenedImage] = {}
        self.results: OrderedDict[str, ViewResult] = OrderedDict()
        self.max_results = max_results
        self.jobs = JobManager(self._run_slide, workdir)
        self._lock = threading.Lock()
        self._n = 0

    def _next(self, prefix: str) -> str:
        with self._lock:
            self._n += 1
            return f"{prefix}{self._n}"

    def _run_slide(self, path: Path, prompts: list[str], out: Path, on_band) -> Any:
        from ..slide import segment_slide

        return segment_slide(self.model, path, prompts, out=out, mpp=self.mpp, geojson=True, progress=False,
                             on_band=on_band)

    def open(self, name: str) -> OpenedImage:
        file = self.files.resolve(name)
        for img in self.images.values():
            if img.file.path == file.path:
                return img
        img = open_image(file, self._next("i"), self.mpp)
        self.images[img.id] = img
        return img

    def image(self, image_id: Any) -> OpenedImage:
        img = self.images.get(str(image_id))
        if img is None:
            raise ServeError(404, f"image '{image_id}' is not open; open it first (POST /api/open with a file "
                                  f"from /api/files).")
        return img

    def result(self, result_id: str) -> ViewResult:
        res = self.results.get(result_id)
        if res is None:
            raise ServeError(404, f"result '{result_id}' is gone (the server keeps the last {self.max_results}); "
                                  f"segment the view again.")
        return res

    def keep(self, res: ViewResult) -> None:
        with self._lock:
            self.results[res.id] = res
            while len(self.results) > self.max_results:
                self.results.popitem(last=False)

    def model_info(self) -> dict:
        cfg = self.model.config
        return {"name": self.model.name, "mpp": cfg.preprocess.mpp, "input_size": cfg.preprocess.input_size}


def _prompts(body: dict) -> list[str]:
    prompts = body.get("prompts") or []
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ServeError(422, f"prompts={prompts!r}: expected a list of phrases such as ['tumor nuclei', 'stroma'].")
    prompts = [p.strip() for p in prompts if p.strip()]
    if len(prompts) > 12:
        raise ServeError(422, f"{len(prompts)} prompts: at most 12 at once.")
    return prompts


def create_app(model: Any, files: FileRegistry, *, mpp: float | None = None, workdir: str | Path | None = None):
    """The Starlette app serving ``files`` with ``model`` (a :class:`~pathsegmentor.PathSegmentor`).
    ``mpp`` overrides or supplies the level-0 microns per pixel of every opened file."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    state = ServerState(model, files, mpp=mpp, workdir=workdir)

    async def body_of(request: Request) -> dict:
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_BODY:
            raise ServeError(413, f"request body of {size} bytes is over the {MAX_BODY} byte limit; the viewer "
                                  f"takes no uploads: start it with the file on the command line or under --root.")
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise ServeError(413, f"request body over the {MAX_BODY} byte limit.")
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise ServeError(400, "the request body is not JSON.") from None
        if not isinstance(body, dict):
            raise ServeError(400, "the request body must be a JSON object.")
        return body

    def index(request: Request):
        return FileResponse(STATIC_DIR / "index.html")

    def list_files(request: Request):
        return JSONResponse({"files": [{"name": f.name, "kind": f.kind} for f in state.files.list()],
                             "model": state.model_info(), "root": str(state.files.root) if state.files.root else None,
                             "initial": state.files.initial})

    async def open_file(request: Request):
        body = await body_of(request)
        from starlette.concurrency import run_in_threadpool

        img = await run_in_threadpool(state.open, body.get("file"))
        return JSONResponse(img.info())

    def dzi(request: Request):
        img = state.image(request.path_params["image_id"])
        h, w = img.reader.dimensions
        return Response(dzi_xml(w, h), media_type="application/xml")

    def tile(request: Request):
        pp = request.path_params
        img = state.image(pp["image_id"])
        if pp["fmt"] not in ("jpeg", "jpg", "png"):
            raise ServeError(404, f"tile format '{pp['fmt']}': use jpeg or png.")
        arr = render_tile(img.reader.levels, img.read, pp["level"], pp["col"], pp["row"])
        fmt = "png" if pp["fmt"] == "png" else "jpeg"
        return Response(encode(arr, fmt), media_type=f"image/{fmt}", headers={"Cache-Control": "max-age=3600"})

    async def segment(request: Request):
        from starlette.concurrency import run_in_threadpool

        body = await body_of(request)
        img = state.image(body.get("image"))
        prompts = _prompts(body)
        box, points = body.get("box"), body.get("points")
        if box is not None and (not isinstance(box, list) or len(box) != 4):
            raise ServeError(422, f"box={box!r}: expected [x0, y0, x1, y1] in level-0 pixels.")
        if points is not None and (not isinstance(points, list) or
                                   not all(isinstance(p, list) and len(p) == 3 for p in points)):
            raise ServeError(422, f"points={points!r}: expected [[x, y, label], ...] (label 1 fg, 0 bg).")
        if not prompts and box is None and not points:
            raise ServeError(422, "no prompt: type a phrase such as 'tumor nuclei', or draw a box / click points.")
        h, w = img.reader.dimensions
        region = Region.parse(body.get("region"), w, h)
        res = await run_in_threadpool(segment_view, state.model, state.cache, img, state._next("r"),
                                      prompts=prompts, region=region, box=box, points=points or None)
        state.keep(res)
        return JSONResponse(res.summary())

    def overlay(request: Request):
        res = state.result(request.path_params["rid"])
        return Response(res.overlay_png(request.path_params["k"]), media_type="image/png")

    def export_geojson(request: Request):
        res = state.result(request.path_params["rid"])
        return Response(geojson_bytes(res), media_type="application/geo+json",
                        headers={"Content-Disposition": f'attachment; filename="{res.id}.geojson"'})

    def export_csv(request: Request):
        res = state.result(request.path_params["rid"])
        return Response(objects_csv_bytes(res), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{res.id}-objects.csv"'})

    def export_mask(request: Request):
        res = state.result(request.path_params["rid"])
        k = request.path_params["k"]
        return Response(mask_png_bytes(res, k), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{res.id}-mask-{k}.png"'})

    async def submit_job(request: Request):
        body = await body_of(request)
        img = state.image(body.get("image"))
        prompts = _prompts(body)
        if not prompts:
            raise ServeError(422, "a whole-slide job needs at least one text prompt, e.g. 'nuclei'.")
        if img.file.kind != "slide":
            raise ServeError(422, f"'{img.file.name}' is a tile, not a slide: segment the view instead.")
        return JSONResponse(state.jobs.submit(img.id, img.file.path, prompts).to_dict(), status_code=202)

    def job_status(request: Request):
        job = state.jobs.get(request.path_params["jid"])
        if request.method == "DELETE":
            state.jobs.cancel(job.id)
        return JSONResponse(job.to_dict())

    def job_file(request: Request):
        job = state.jobs.get(request.path_params["jid"])
        files = job.files()
        name = request.path_params["name"]
        if name not in files:
            raise ServeError(404, f"job {job.id} has no output '{name}' (state {job.state}); outputs: "
                                  f"{sorted(files) or 'none yet'}.")
        return FileResponse(files[name], filename=name)

    def _job_mask(request: Request) -> OpenedImage:
        job = state.jobs.get(request.path_params["jid"])
        masks = job.masks()
        k = request.path_params["k"]
        if not 0 <= k < len(masks):
            raise ServeError(404, f"job {job.id} has no mask {k} (state {job.state}, {len(masks)} mask(s)).")
        key = f"{job.id}-m{k}"
        if key not in state.images:
            from ..slide.reader import open_slide
            from .files import ServedFile

            path = job.result.masks[masks[k]["prompt"]]
            state.images[key] = OpenedImage(key, ServedFile(path.name, path), open_slide(path))
        return state.images[key]

    def job_dzi(request: Request):
        img = _job_mask(request)
        h, w = img.reader.dimensions
        return Response(dzi_xml(w, h, fmt="png"), media_type="application/xml")

    def job_tile(request: Request):
        from ..slide.geojson import prompt_color

        pp = request.path_params
        img = _job_mask(request)
        arr = render_tile(img.reader.levels, img.read, pp["level"], pp["col"], pp["row"])
        mthr = 255.0 * float(state.model.config.inference.mask_threshold)
        rgba = np.zeros((*arr.shape[:2], 4), np.uint8)
        rgba[..., :3] = prompt_color(pp["k"])
        rgba[..., 3] = np.where(arr[..., 0] > mthr, 130, 0)
        return Response(encode(rgba, "png"), media_type="image/png")

    async def on_error(request: Request, exc: ServeError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def on_crash(request: Request, exc: Exception):
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    routes = [
        Route("/", index),
        Route("/api/files", list_files),
        Route("/api/open", open_file, methods=["POST"]),
        Route("/api/images/{image_id}.dzi", dzi),
        Route("/api/images/{image_id}_files/{level:int}/{col:int}_{row:int}.{fmt}", tile),
        Route("/api/segment", segment, methods=["POST"]),
        Route("/api/results/{rid}/overlay/{k:int}.png", overlay),
        Route("/api/results/{rid}/export.geojson", export_geojson),
        Route("/api/results/{rid}/objects.csv", export_csv),
        Route("/api/results/{rid}/mask/{k:int}.png", export_mask),
        Route("/api/jobs", submit_job, methods=["POST"]),
        Route("/api/jobs/{jid}", job_status, methods=["GET", "DELETE"]),
        Route("/api/jobs/{jid}/files/{name}", job_file),
        Route("/api/jobs/{jid}/overlay/{k:int}.dzi", job_dzi),
        Route("/api/jobs/{jid}/overlay/{k:int}_files/{level:int}/{col:int}_{row:int}.png", job_tile),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.jobs.close()

    app = Starlette(routes=routes, exception_handlers={ServeError: on_error, Exception: on_crash}, lifespan=lifespan)
    app.state.serve = state
    return app
