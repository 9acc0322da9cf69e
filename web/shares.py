"""Share links in the web server: made and revoked through the API (as the server's own identity), and opened by
anyone with a link, no INCL account needed.

    POST /api/shares                 {job, path?} or {model, version}, expires? ("24h", or seconds) -> {share, url}
    GET  /api/shares                 {shares}: the ones this server's identity made, newest first
    POST /api/shares/{id}/revoke     {share}
    GET  /s/{token}                  a page saying what is shared, with its download (410 once expired or revoked)
    GET  /s/{token}/download         the file itself, or the folder (or model version) as a tar archive
    GET  /s/{token}/files/{path}     one file of a shared folder (its path inside the folder)

Every request through a link asks the controller to resolve it (the signature is checked there, in constant time)
and serves only what the share's record names: the trees it fixed when it was made, under its path. A link
that does not resolve gets a page saying so, never a byte of an artifact. The /s/ pages are plain HTML, no script.
"""

from __future__ import annotations

import html
import posixpath
import time
from string import Template
from urllib.parse import quote

import msgspec
from aiohttp import web

from incl.artifacts import browse
from incl.artifacts import errors as store_errors
from incl.proto import errors
from incl.proto.shares import Share, ShareTarget, parse_duration
from incl.web import files
from incl.web.api import _json
from incl.web.pages import STATIC
from incl.web.sessions import CONFIG, client_of

routes = web.RouteTableDef()
PAGE = Template((STATIC / "share.html").read_text())  # $title and $body, both escaped by the caller
LISTED = 1000  # files listed on a shared folder's page; the archive has them all


class NewShare(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job: str | None = None
    path: str = ""
    model: str | None = None
    version: int | None = None
    expires: str | float | None = None  # "24h", "7d", or seconds; None: the controller's default (7 days)


def link(request: web.Request, token: str) -> str:
    base = request.app[CONFIG].public_url or f"{request.scheme}://{request.host}"
    return f"{base.rstrip('/')}/s/{token}"


@routes.post("/api/shares")
async def create(request: web.Request) -> web.Response:
    try:
        new = msgspec.json.decode(await request.read(), type=NewShare)
    except msgspec.DecodeError as exc:
        raise errors.BadRequest(f"the body is not a share: {exc}") from None
    expires = None if new.expires is None else (
        parse_duration(new.expires) if isinstance(new.expires, str) else float(new.expires))
    target = ShareTarget(job_id=new.job, path=new.path, model=new.model, version=new.version)
    made = await client_of(request).create_share(target, expires)
    return _json({"share": made.share, "url": link(request, made.token)})


@routes.get("/api/shares")
async def listing(request: web.Request) -> web.Response:
    return _json({"shares": await client_of(request).shares()})


@routes.post("/api/shares/{share_id}/revoke")
async def revoke(request: web.Request) -> web.Response:
    return _json({"share": await client_of(request).revoke_share(request.match_info["share_id"])})


# --- the links --------------------------------------------------------------------------------------------


class Closed(Exception):
    """A link that opens nothing: the page to answer with."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(title)
        self.status, self.title, self.text = status, title, text


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n:,} bytes"
    value, unit = float(n), "bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):  # noqa: B007 - the last unit reached is the one shown
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


async def _open(request: web.Request) -> Share:
    """The share the link's token names, if it is active; Closed (404 or 410) otherwise."""
    try:
        found = await client_of(request).resolve_share(request.match_info["token"])
    except errors.NotFound:
        raise Closed(404, "No such link", "This share link does not exist: it may be mistyped or cut short.") from None
    if found.share is None:
        when = f" on {_when(found.ended_at)}" if found.ended_at else ""
        if found.state == "revoked":
            raise Closed(410, "This link was revoked", f"Whoever shared it revoked it{when}; ask them for a new one.")
        raise Closed(410, "This link has expired", f"It expired{when}; ask whoever shared it for a new one.")
    return found.share


async def _shared(request: web.Request, share: Share) -> tuple[str, list[browse.Item]]:
    """The path the share is of, and the entries under it: nothing outside it is ever listed or served."""
    store = await files.store_of(request)
    try:
        listing = await browse.items(store, [(t.folder, t.digest) for t in share.trees])
        return browse.clean(share.target.path), browse.under(listing, share.target.path)
    except store_errors.NotFound:
        raise Closed(410, "The shared files are gone", "They are no longer in the artifact store.") from None


def _page(status: int, title: str, body: str) -> web.Response:
    text = PAGE.substitute(title=html.escape(title), body=body)
    return web.Response(status=status, text=text, content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})


def _closed(exc: Closed) -> web.Response:
    return _page(exc.status, exc.title, f"<h1>{html.escape(exc.title)}</h1><p class=\"muted\">"
                                        f"{html.escape(exc.text)}</p>")


@routes.get("/s/{token}")
async def page(request: web.Request) -> web.Response:
    try:
        share = await _open(request)
        root, chosen = await _shared(request, share)
    except Closed as exc:
        return _closed(exc)
    token = html.escape(request.match_info["token"], quote=True)
    what = {"output": "a file", "folder": "a folder of outputs", "model": "a model version"}[share.kind]
    source = f"model {share.target.model} v{share.target.version}" if share.kind == "model" else \
        f"job {share.target.job_id}"
    download = "Download" if share.kind == "output" else "Download all (.tar)"
    parts = [f"<h1>{html.escape(share.name)}</h1>",
             f"<p class=\"muted\">{html.escape(what)} from {html.escape(source)}, shared by "
             f"{html.escape(share.created_by)} · {share.files:,} file{'s' if share.files != 1 else ''}, "
             f"{_size(share.bytes)} · this link expires {_when(share.expires_at)}</p>",
             f"<p><a id=\"download\" class=\"button\" href=\"/s/{token}/download\">{download}</a></p>"]
    shown = [i for i in chosen if i.kind == "file"]
    if share.kind != "output" and shown:
        cut = len(root) + 1 if root else 0
        rows = "".join(f"<tr><td><a href=\"/s/{token}/files/{html.escape(quote(i.path[cut:]), quote=True)}\">"
                       f"{html.escape(i.path[cut:])}</a></td><td class=\"num\">{_size(i.size)}</td></tr>"
                       for i in shown[:LISTED])
        more = f"<p class=\"muted\">and {len(shown) - LISTED:,} more in the archive</p>" if len(shown) > LISTED else ""
        parts.append(f"<table class=\"files\"><thead><tr><th>File</th><th class=\"num\">Size</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>{more}")
    return _page(200, share.name, "".join(parts))


@routes.get("/s/{token}/download")
async def download(request: web.Request) -> web.StreamResponse:
    try:
        share = await _open(request)
        root, chosen = await _shared(request, share)
    except Closed as exc:
        return _closed(exc)
    return await files.send(request, await files.store_of(request), chosen, root, share.name, share.created_at)


@routes.get("/s/{token}/files/{path:.+}")
async def one(request: web.Request) -> web.StreamResponse:
    try:
        share = await _open(request)
        root, chosen = await _shared(request, share)
        inner = posixpath.join(root, request.match_info["path"].strip("/"))
        try:
            path, picked = browse.clean(inner), browse.under(chosen, inner)
        except store_errors.NotFound:
            raise Closed(404, "Not in this share", "The link does not share that file.") from None
        if share.kind == "output" and path != root:
            raise Closed(404, "Not in this share", "The link does not share that file.")
    except Closed as exc:
        return _closed(exc)
    return await files.send(request, await files.store_of(request), picked, path, posixpath.basename(path),
                            share.created_at)
