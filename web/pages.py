"""The pages: static HTML and small JavaScript modules, no build step. Each page is one HTML file whose script
reads the JSON API; the URL of each is stable, so a link to a job can be shared.

Every response carries a Content-Security-Policy that allows scripts from this server only: even if some text
reached the page as markup, no inline script or event handler in it could run. No page may be framed by
another site (a framed cancel button is a click away from being pressed by trickery)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from incl.web.errors import Handler

STATIC = Path(__file__).parent / "static"

HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


async def secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in HEADERS.items():
        response.headers.setdefault(name, value)


def _page(name: str) -> Handler:
    path = STATIC / name

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

    return handler


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/jobs")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/jobs", _page("jobs.html"))
    app.router.add_get("/jobs/{job_id}", _page("job.html"))
    # Compare, Study, Cluster
    app.router.add_get("/compare", _page("compare.html"))
    app.router.add_get("/studies", _page("studies.html"))
    app.router.add_get("/studies/{study_id}", _page("study.html"))
    app.router.add_get("/cluster", _page("cluster.html"))
    app.router.add_get("/login", _page("login.html"))  # signing in (incl.web.sessions)
    # Models
    app.router.add_get("/models", _page("models.html"))
    app.router.add_get("/models/{name}", _page("model.html"))
    app.router.add_static("/static/", STATIC)
