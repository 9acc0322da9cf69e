"""Requests from other sites: refused before they reach a handler.

A page on another site can make a browser send requests here with the user's network position (and, later,
cookies). Two kinds of attack, two checks:
- cross-site requests that change state (a form posted to /api/jobs/ID/cancel): every request that is not GET or
  HEAD must carry the `X-INCL` header, which a form cannot set and a script on another origin cannot send without
  a CORS preflight this server never grants; and its `Origin` and `Sec-Fetch-Site`, when the browser sends them,
  must say it comes from this server's own origin;
- DNS rebinding (another site's name pointed at 127.0.0.1, so that its pages are "same origin" with this server):
  a request whose Host header is not one of this server's names is refused, reads included.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from incl.web.errors import Handler, json_error

HEADER = "X-INCL"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


def host_names(bind_host: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The host names (without port) this server answers; None (any) when it listens on every address and names
    no public host, since it cannot know what it is reached as. Any port is fine: a rebinding page's Host still
    carries its own name."""
    extra = list(extra)
    if bind_host in ("0.0.0.0", "::", "") and not extra:
        return None
    return frozenset({*LOCAL_NAMES, bind_host, *extra})


def without_port(host: str) -> str:
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() and not host.endswith("]") else host


def refusal(request: web.Request, hosts: frozenset[str] | None) -> str | None:
    """Why `request` is refused, or None. The server's own origin is the one the request's Host names."""
    if hosts is not None and without_port(request.host) not in hosts:
        return f"unknown Host {request.host!r}: this server answers only its own names"
    if request.method in SAFE_METHODS:
        return None
    if not request.headers.get(HEADER):
        return f"cross-site request refused: state-changing requests must carry the {HEADER} header"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return f"cross-site request refused: Origin {origin!r} is not this server"
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused: Sec-Fetch-Site is {site!r}"
    return None


def middleware(hosts: frozenset[str] | None) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        why = refusal(request, hosts)
        if why is not None:
            return json_error(403, why)
        return await handler(request)

    return guard
