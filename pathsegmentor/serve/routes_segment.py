"""Routes of segmenting a view and reading its result: ``POST /api/segment`` (a view or region, with
prompts, a box or points), ``GET /api/results/{rid}/overlay/{k}.png`` and the exports
(``export.geojson``, ``objects.csv``, ``mask/{k}.png``)."""
from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .export import geojson_bytes, mask_png_bytes, objects_csv_bytes
from .files import ServeError
from .request_body import body_of, prompts_of
from .state import ServerState
from .view import Region, segment_view


def _check_geometry(box, points, prompts: list[str]) -> None:
    """422 unless ``box`` is ``[x0, y0, x1, y1]``, ``points`` is ``[[x, y, label], ...]`` and there is a prompt."""
    if box is not None and (not isinstance(box, list) or len(box) != 4):
        raise ServeError(422, f"box={box!r}: expected [x0, y0, x1, y1] in level-0 pixels.")
    if points is not None and (not isinstance(points, list) or
                               not all(isinstance(p, list) and len(p) == 3 for p in points)):
        raise ServeError(422, f"points={points!r}: expected [[x, y, label], ...] (label 1 fg, 0 bg).")
    if not prompts and box is None and not points:
        raise ServeError(422, "no prompt: type a phrase such as 'tumor nuclei', or draw a box / click points.")


def segment_routes(state: ServerState) -> list[BaseRoute]:
    """``POST /api/segment`` and the routes of its results (kept in ``state``, LRU) for ``state``."""

    async def segment(request: Request):
        body = await body_of(request)
        img = state.image(body.get("image"))
        prompts = prompts_of(body)
        box, points = body.get("box"), body.get("points")
        _check_geometry(box, points, prompts)
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

    return [
        Route("/api/segment", segment, methods=["POST"]),
        Route("/api/results/{rid}/overlay/{k:int}.png", overlay),
        Route("/api/results/{rid}/export.geojson", export_geojson),
        Route("/api/results/{rid}/objects.csv", export_csv),
        Route("/api/results/{rid}/mask/{k:int}.png", export_mask),
    ]
