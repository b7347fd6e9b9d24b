"""Routes of whole-slide jobs: ``POST /api/jobs`` (submit), ``GET``/``DELETE /api/jobs/{jid}`` (status,
cancel), ``GET /api/jobs/{jid}/files/{name}`` (an output) and ``GET /api/jobs/{jid}/overlay/{k}.dzi`` with
its PNG tiles (a job's mask as a Deep Zoom overlay layer)."""
from __future__ import annotations

import numpy as np
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .dzi import dzi_xml, encode, render_tile
from .files import ServeError
from .request_body import body_of, prompts_of
from .sources import OpenedImage
from .state import ServerState


def job_mask(state: ServerState, request: Request) -> OpenedImage:
    """Job ``jid``'s mask ``k`` (path parameters) opened as an image, once (kept in ``state.images``)."""
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


def job_routes(state: ServerState) -> list[BaseRoute]:
    """The whole-slide job routes for ``state``'s job manager."""

    async def submit_job(request: Request):
        body = await body_of(request)
        img = state.image(body.get("image"))
        prompts = prompts_of(body)
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

    def job_dzi(request: Request):
        img = job_mask(state, request)
        h, w = img.reader.dimensions
        return Response(dzi_xml(w, h, fmt="png"), media_type="application/xml")

    def job_tile(request: Request):
        from ..slide.geojson import prompt_color

        pp = request.path_params
        img = job_mask(state, request)
        arr = render_tile(img.reader.levels, img.read, pp["level"], pp["col"], pp["row"])
        mthr = 255.0 * float(state.model.config.inference.mask_threshold)
        rgba = np.zeros((*arr.shape[:2], 4), np.uint8)
        rgba[..., :3] = prompt_color(pp["k"])
        rgba[..., 3] = np.where(arr[..., 0] > mthr, 130, 0)
        return Response(encode(rgba, "png"), media_type="image/png")

    return [
        Route("/api/jobs", submit_job, methods=["POST"]),
        Route("/api/jobs/{jid}", job_status, methods=["GET", "DELETE"]),
        Route("/api/jobs/{jid}/files/{name}", job_file),
        Route("/api/jobs/{jid}/overlay/{k:int}.dzi", job_dzi),
        Route("/api/jobs/{jid}/overlay/{k:int}_files/{level:int}/{col:int}_{row:int}.png", job_tile),
    ]
