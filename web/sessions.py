"""Signing in: each person acts with their own rights, never the web server's.

With `sign_in` on, a browser signs in with the person's INCL credential file (the one `incl admin user add` wrote
for them): the server opens a bus connection of that identity and keeps it for the session, so every read and
every change is asked under their name, and the controller and the NATS server apply their rights (their jobs,
their teams'). A session is a random id in a cookie (HttpOnly, SameSite=Strict; Secure over HTTPS); the seed is
held in memory only, for the connection, and dropped with it when the person signs out or the session has been
idle for `session_idle`. Requests without a session get 401 under /api/ (the pages send the browser to /login).

Without `sign_in` (the laptop's `incl up`: loopback only, one user) every request acts as the server's own
identity. A server reachable from other hosts must sign people in: `WebConfig` refuses the other combination.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web

from incl.auth.keys import parse_creds
from incl.bus.client import Client
from incl.proto.errors import InclError, NotAllowed
from incl.web.config import WebConfig
from incl.web.errors import Handler
from incl.web.snapshot import JobsSnapshot

log = structlog.get_logger()

COOKIE = "incl_session"
CREDS_MAX_BYTES = 8192
# The application's: its config, and the server's own client and jobs snapshot (what a request without sign-in
# acts through). A request's own are request[ACTING] (`client_of`, `snapshot_of`).
CLIENT = web.AppKey("client", Client)
CONFIG = web.AppKey("config", WebConfig)
SNAPSHOT = web.AppKey("snapshot", JobsSnapshot)
ACTING = web.RequestKey("acting", tuple)


def client_of(request: web.Request) -> Client:
    """The client this request acts through: the signed-in person's, or the server's own."""
    client: Client = request[ACTING][0]
    return client


def snapshot_of(request: web.Request) -> JobsSnapshot:
    snapshot: JobsSnapshot = request[ACTING][1]
    return snapshot


@dataclass
class Session:
    user: str
    client: Client
    snapshot: JobsSnapshot
    last_used: float = field(default_factory=time.monotonic)


class Sessions:
    """The signed-in people of one web server, each with their own bus connection."""

    def __init__(self, cfg: WebConfig) -> None:
        self._cfg = cfg
        self._by_id: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    async def sign_in(self, creds_text: str) -> tuple[str, Session]:
        """A session for whoever `creds_text` names: connected, so the NATS server has checked the key."""
        if len(creds_text.encode()) > CREDS_MAX_BYTES:
            raise SignInRefused("that is not an INCL credential file (too large)")
        try:
            creds = parse_creds(creds_text, "the file given")
        except ValueError as exc:
            raise SignInRefused(str(exc)) from None
        if creds.kind != "user" or not creds.name:
            raise SignInRefused("these are not a user's credentials (only people sign in)")
        if len(self._by_id) >= self._cfg.sessions_max:
            await self.expire(force_oldest=True)
        client = Client(self._cfg.nats_url, timeout=self._cfg.request_timeout, name=f"incl-web-{creds.name}",
                        hedge_after=self._cfg.hedge_after,
                        creds=creds, tls_ca=Path(self._cfg.tls_ca) if self._cfg.tls_ca else None)
        try:
            await client.__aenter__()
            await client.ping()  # the controller answers this identity
        except InclError as exc:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            raise SignInRefused(f"sign-in refused: {exc.message}") from None
        session_id = secrets.token_urlsafe(32)
        session = Session(user=creds.name, client=client, snapshot=JobsSnapshot(client, self._cfg.jobs_cache_ttl))
        self._by_id[session_id] = session
        log.info("web_signed_in", user=creds.name, sessions=len(self._by_id))
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id) if session_id else None
        if session is None:
            return None
        if time.monotonic() - session.last_used > self._cfg.session_idle:
            return None  # `expire` closes it
        session.last_used = time.monotonic()
        return session

    async def sign_out(self, session_id: str | None) -> None:
        session = self._by_id.pop(session_id, None) if session_id else None
        if session is not None:
            await _close(session)
            log.info("web_signed_out", user=session.user)

    async def expire(self, force_oldest: bool = False) -> None:
        """Close the sessions idle past `session_idle` (and the oldest one, to make room)."""
        now = time.monotonic()
        gone = [k for k, s in self._by_id.items() if now - s.last_used > self._cfg.session_idle]
        if force_oldest and not gone and self._by_id:
            gone = [min(self._by_id, key=lambda k: self._by_id[k].last_used)]
        for key in gone:
            session = self._by_id.pop(key)
            await _close(session)
            log.info("web_session_expired", user=session.user)

    async def close(self) -> None:
        for key in list(self._by_id):
            await _close(self._by_id.pop(key))


class SignInRefused(NotAllowed):
    """The credential file was not a user's, or the NATS server refused it."""


async def _close(session: Session) -> None:
    with contextlib.suppress(Exception):
        await session.snapshot.close()
    with contextlib.suppress(Exception):
        await session.client.__aexit__(None, None, None)


SESSIONS = web.AppKey("sessions", Sessions)


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    """The sessions live with the application; idle ones are closed every `session_idle / 4`."""
    cfg = app[CONFIG]
    sessions = app[SESSIONS] = Sessions(cfg)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(max(cfg.session_idle / 4, 1.0))
            await sessions.expire()

    sweeper = asyncio.create_task(sweep())
    try:
        yield
    finally:
        sweeper.cancel()
        await sessions.close()


routes = web.RouteTableDef()


@routes.post("/api/session")
async def sign_in(request: web.Request) -> web.Response:
    """Body: the credential file's text (or JSON `{"creds": "..."}`). Sets the session cookie."""
    if not request.app[CONFIG].sign_in:
        raise InclError("this server signs nobody in: it acts as its own identity (sign_in: false)")
    text = await request.text()
    if request.content_type == "application/json":
        body = await request.json()
        text = str(body.get("creds", "")) if isinstance(body, dict) else ""
    session_id, session = await request.app[SESSIONS].sign_in(text)
    resp = web.json_response({"user": session.user})
    resp.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", secure=request.secure, path="/")
    return resp


@routes.get("/api/session")
async def who(request: web.Request) -> web.Response:
    """Who the requests act as: the signed-in person (None: nobody yet), or the server's own identity."""
    sign_in = request.app[CONFIG].sign_in
    session = request.app[SESSIONS].get(request.cookies.get(COOKIE)) if sign_in else None
    user = (session.user if session is not None else None) if sign_in else client_of(request).user
    return web.json_response({"user": user, "sign_in": sign_in})


@routes.delete("/api/session")
async def sign_out(request: web.Request) -> web.Response:
    await request.app[SESSIONS].sign_out(request.cookies.get(COOKIE))
    resp = web.json_response({"signed_out": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


OPEN_PATHS = ("/login", "/static/", "/s/", "/api/session", "/api/openapi.json")


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Picks the client each request acts through: the session's (sign_in on), or the server's own (sign_in off,
    and the pages open to all: the sign-in page, static files, share links)."""
    app = request.app
    if not app[CONFIG].sign_in:
        request[ACTING] = (app[CLIENT], app[SNAPSHOT])
        return await handler(request)
    session = app[SESSIONS].get(request.cookies.get(COOKIE))
    if session is not None:
        request[ACTING] = (session.client, session.snapshot)
        return await handler(request)
    if request.path.startswith(OPEN_PATHS):
        request[ACTING] = (app[CLIENT], app[SNAPSHOT])
        return await handler(request)
    if request.path.startswith("/api/"):
        return web.json_response({"error": "sign in first (POST /api/session with your credential file)"},
                                 status=401)
    raise web.HTTPFound(f"/login?next={request.path_qs}")
