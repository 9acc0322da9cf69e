"""Failures as the API answers them: JSON `{"error": "..."}` with an HTTP status.

An INCL error from the controller keeps its meaning (NotFound is 404, Conflict 409, ...); a query the server
cannot read is a `BadQuery`, 400, naming the parameter. Pages outside /api/ get the same status in plain text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from incl.proto import errors

log = structlog.get_logger()

STATUS: list[tuple[type[errors.InclError], int]] = [
    (errors.NotFound, 404),
    (errors.BadRequest, 400),
    (errors.Conflict, 409),
    (errors.NotAllowed, 403),
    (errors.Unavailable, 503),
    (errors.InclError, 500),
]


class BadQuery(errors.BadRequest):
    """A query parameter the server cannot read; `field` names it."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{message} (parameter {name!r})", field=name)


def status_of(exc: errors.InclError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def json_error(status: int, message: str, parameter: str | None = None) -> web.Response:
    body = {"error": message} if parameter is None else {"error": message, "parameter": parameter}
    return web.json_response(body, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """INCL errors and HTTP errors under /api/ as JSON; anything else is logged and answered 500, never a
    traceback to the browser."""
    api = request.path.startswith("/api/")
    try:
        return await handler(request)
    except errors.InclError as exc:
        status = status_of(exc)
        if status >= 500:
            log.warning("web_request_failed", path=request.path, code=exc.code, error=exc.message)
        if not api:
            return web.Response(status=status, text=exc.message)
        parameter = exc.field if isinstance(exc, BadQuery) else None
        return json_error(status, exc.message if parameter else str(exc), parameter)
    except web.HTTPException as exc:
        if not api or exc.status < 400:
            raise
        resp = json_error(exc.status, exc.text or exc.reason)
        for name in ("Content-Range", "Allow", "Retry-After"):  # what the status means depends on them
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp
