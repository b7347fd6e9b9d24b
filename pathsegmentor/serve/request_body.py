"""Reading a JSON request: the body size limit (the viewer takes no uploads) and the prompt list."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .files import ServeError

if TYPE_CHECKING:
    from starlette.requests import Request

MAX_BODY = 1 << 20  # JSON requests; the viewer takes no uploads


async def body_of(request: Request) -> dict:
    """The request's JSON object; 413 over :data:`MAX_BODY` bytes (by header, then as read), 400 if it
    is not JSON or not an object."""
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


def prompts_of(body: dict) -> list[str]:
    """``body["prompts"]`` (a phrase or a list of phrases) stripped, blanks dropped; 422 if not phrases
    or more than 12."""
    prompts = body.get("prompts") or []
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ServeError(422, f"prompts={prompts!r}: expected a list of phrases such as ['tumor nuclei', 'stroma'].")
    prompts = [p.strip() for p in prompts if p.strip()]
    if len(prompts) > 12:
        raise ServeError(422, f"{len(prompts)} prompts: at most 12 at once.")
    return prompts
