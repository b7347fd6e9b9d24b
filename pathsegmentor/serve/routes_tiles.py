"""Routes of an open image's Deep Zoom pyramid: ``GET /api/images/{id}.dzi`` (the descriptor) and
``GET /api/images/{id}_files/{level}/{col}_{row}.{jpeg|jpg|png}`` (a tile cut from the pyramid)."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .dzi import dzi_xml, encode, render_tile
from .files import ServeError
from .state import ServerState


def tile_routes(state: ServerState) -> list[BaseRoute]:
    """The DZI descriptor and tile routes for ``state``'s open images."""

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

    return [
        Route("/api/images/{image_id}.dzi", dzi),
        Route("/api/images/{image_id}_files/{level:int}/{col:int}_{row:int}.{fmt}", tile),
    ]
