"""The web server: one aiohttp application around one bus client, and `serve`, its lifespan as a daemon."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from incl.bus.client import Client
from incl.bus.connection import masked
from incl.proto.errors import InclError
from incl.web import api, errors, files, guard, models, pages, sessions, shares, views
from incl.web.config import WebConfig
from incl.web.pointcache import PointCache
from incl.web.snapshot import JobsSnapshot

log = structlog.get_logger()


def make_app(cfg: WebConfig) -> web.Application:
    app = web.Application(middlewares=[guard.middleware(guard.host_names(cfg.host, cfg.allowed_hosts)),
                                       errors.middleware, sessions.middleware])
    app[sessions.CONFIG] = cfg
    app[api.POINTS] = PointCache(cfg.metric_cache_points)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        """The bus client lives as long as the application: connected before the first request, closed after
        the last."""
        async with Client(cfg.nats_url, timeout=cfg.request_timeout, name="incl-web", hedge_after=cfg.hedge_after,
                          creds=Path(cfg.creds) if cfg.creds else None,
                          tls_ca=Path(cfg.tls_ca) if cfg.tls_ca else None) as client:
            snapshot = JobsSnapshot(client, cfg.jobs_cache_ttl)
            app[sessions.CLIENT], app[sessions.SNAPSHOT] = client, snapshot
            try:
                yield
            finally:
                await app[api.POINTS].close()  # its background reads use the client
                await snapshot.close()

    app.cleanup_ctx.append(lifespan)
    app.cleanup_ctx.append(sessions.lifespan)  # the signed-in people's connections (sign_in)
    app.add_routes(sessions.routes)
    app.on_response_prepare.append(pages.secure_headers)
    app.add_routes(api.routes)
    app.add_routes(views.routes)  # Compare, Study, Cluster
    # Outputs and share links (incl.web.files, incl.web.shares): the store is opened once, closed with the app.
    app.cleanup_ctx.append(files.lifespan)
    app.add_routes(files.routes)
    app.add_routes(shares.routes)
    app.add_routes(models.routes)  # Models
    pages.add_routes(app)
    return app


async def serve(cfg: WebConfig) -> None:
    """Serve until cancelled (SIGTERM through `run_until_signalled`), then close every connection."""
    runner = web.AppRunner(make_app(cfg), shutdown_timeout=cfg.shutdown_grace, access_log=None)
    try:
        await runner.setup()
    except InclError as exc:  # NATS unreachable, refused credentials: one line, not a traceback
        log.error("web_cannot_start", error=str(exc))
        raise SystemExit(1) from None
    try:
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        log.info("web_serving", url=url_of(cfg.host, cfg.port), nats=masked(cfg.nats_url))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
