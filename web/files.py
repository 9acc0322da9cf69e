"""A job's outputs in the browser: their listing, one file, and a folder (or all of them) as a tar archive, each
streamed from the artifact store chunk by chunk (`incl.artifacts.browse`): a 5 GB output never sits in the
server's memory, and every response says its length up front.

    GET /api/jobs/{id}/outputs            {attempt, files: [{path, size, kind}], bytes}: every entry, sorted
    GET /api/jobs/{id}/outputs/{path}     a file's bytes, or a folder as `<folder>.tar`
    GET /api/jobs/{id}/outputs.tar        every output as `<job>.tar`
    ?attempt=N                            another attempt's outputs (default: the last one that left some)

Share links (incl.web.shares) serve their artifact through the same `send`.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from urllib.parse import quote

import structlog
from aiohttp import web

from incl.artifacts import browse
from incl.artifacts import errors as store_errors
from incl.artifacts.store import ArtifactStore, open_store
from incl.proto import errors
from incl.proto.messages import Attempt, Job
from incl.proto.outputs import attempt_with_outputs, rank_trees
from incl.web.api import _job, _json
from incl.web.errors import BadQuery
from incl.web.sessions import client_of

log = structlog.get_logger()

routes = web.RouteTableDef()


class Stores:
    """The artifact store, opened on first use (its URL comes from the controller) and closed with the app."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self._store: ArtifactStore | None = None

    async def get(self, url: str) -> ArtifactStore:
        if self._store is None or self._store.url != url:
            self._store = await self._stack.enter_async_context(open_store(url))
        return self._store

    async def close(self) -> None:
        await self._stack.aclose()


STORES = web.AppKey("stores", Stores)


async def lifespan(app: web.Application) -> AsyncIterator[None]:
    app[STORES] = Stores()
    try:
        yield
    finally:
        await app[STORES].close()


async def store_of(request: web.Request) -> ArtifactStore:
    return await request.app[STORES].get(await client_of(request).store_url())


def disposition(name: str) -> str:
    """`attachment` with the name both as plain ASCII and, for any other character, RFC 5987's UTF-8 form."""
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


async def send(request: web.Request, store: ArtifactStore, chosen: list[browse.Item], root: str,
               name: str, mtime: float) -> web.StreamResponse:
    """`root` itself when it is a file, else `chosen` (what `root` names) as `<name>.tar` (its entries dated
    `mtime`: a manifest keeps no times); streamed."""
    if len(chosen) == 1 and chosen[0].kind == "file" and chosen[0].path == root and root:
        item = chosen[0]
        etag = f'"{item.entry.digest}"'  # the file's SHA-256: the same bytes, whichever job or link serves them
        headers = {"Accept-Ranges": "bytes", "ETag": etag}
        part = byte_range(request, item.size, etag)
        if part is None:
            return await _stream(request, browse.read(store, item), item.size, name, "application/octet-stream",
                                 headers)
        start, end = part
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{item.size}"
        return await _stream(request, browse.read_part(store, item, start, end - start), end - start,
                             name, "application/octet-stream", headers, status=206)
    archive = browse.Archive(chosen, root, name, mtime)
    return await _stream(request, archive.chunks(store), archive.size, f"{name}.tar", "application/x-tar")


def byte_range(request: web.Request, size: int, etag: str) -> tuple[int, int] | None:
    """The part of a file a resumed download asks for (`Range: bytes=start-[end]` or `bytes=-suffix`), as
    [start, end); None for the whole file: no Range, one this server does not serve (several ranges, another
    unit: RFC 9110 lets a server ignore them), or an `If-Range` that names other bytes than these. A range that
    starts past the end is a 416 naming the size."""
    if "Range" not in request.headers:
        return None
    if_range = request.headers.get("If-Range")
    if if_range is not None and if_range != etag:  # the file changed since the part held was fetched: start over
        return None
    try:
        part = request.http_range
    except ValueError:  # malformed, or several ranges
        return None
    start, stop = part.start, part.stop
    if start is None:
        return None
    if start < 0:  # the last -start bytes
        return (max(size + start, 0), size) if size else None
    if start >= size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    return start, size if stop is None else min(stop, size)


async def _stream(request: web.Request, chunks: AsyncGenerator[bytes, None], size: int, filename: str,
                  content_type: str, extra: dict[str, str] | None = None, status: int = 200) -> web.StreamResponse:
    """The first chunk is read before anything is sent, so a missing object is still a clean 404; a failure
    later (corrupt bytes, the store gone) cuts the connection short of its Content-Length."""
    headers = {"Content-Type": content_type, "Content-Disposition": disposition(filename), "Cache-Control": "no-store",
               **(extra or {})}
    if request.method == "HEAD":  # what a GET would send, without reading a byte of it
        await chunks.aclose()
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = size
        await resp.prepare(request)
        return resp
    async with contextlib.aclosing(chunks) as read:
        try:
            first = await anext(read, b"")
        except store_errors.NotFound as exc:
            raise errors.NotFound(f"the stored files are gone from the artifact store ({exc.path})") from None
        except store_errors.ArtifactError as exc:  # corrupt, or the store unreachable: nothing sent yet
            raise errors.InclError(str(exc)) from None
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = size
        await resp.prepare(request)
        try:
            await resp.write(first)
            async for chunk in read:
                await resp.write(chunk)
        except store_errors.ArtifactError as exc:  # a browser that goes away is no error of ours: not caught
            # the route, not the path: a share link's path is its secret
            resource = request.match_info.route.resource
            log.warning("web_download_cut", route=resource.canonical if resource else "", error=str(exc))
            if request.transport is not None:
                request.transport.abort()  # short of Content-Length: the browser sees a failed download
            return resp
    await resp.write_eof()
    return resp


async def job_items(request: web.Request) -> tuple[Job, Attempt | None, list[browse.Item]]:
    """The job the path names, the attempt whose outputs are shown (None: none), and their entries."""
    raw = request.query.get("attempt")
    try:
        number = int(raw) if raw else None
    except ValueError:
        raise BadQuery("attempt", "not a number") from None
    job = await _job(request)
    att = attempt_with_outputs(job, number)
    if att is None:
        return job, None, []
    trees = [(folder, ref.digest) for folder, ref in rank_trees(job, att)]
    try:
        return job, att, await browse.items(await store_of(request), trees)
    except store_errors.NotFound as exc:
        raise errors.NotFound(f"the outputs of job {job.id} are gone from the artifact store ({exc.path})") from None


def chosen_under(listing: list[browse.Item], path: str, whose: str) -> tuple[str, list[browse.Item]]:
    """`path` as the listing spells it, and what it names; NotFound (404) saying so."""
    try:
        return browse.clean(path), browse.under(listing, path)
    except store_errors.NotFound:
        raise errors.NotFound(f"{path!r} is not among the outputs of {whose}") from None


@routes.get("/api/jobs/{job_id}/outputs")
async def outputs(request: web.Request) -> web.Response:
    _, att, listing = await job_items(request)
    return _json({"attempt": att.number if att else None, "bytes": sum(i.size for i in listing if i.kind == "file"),
                  "files": [{"path": i.path, "size": i.size, "kind": i.kind} for i in listing]})


@routes.get("/api/jobs/{job_id}/outputs.tar")
async def everything(request: web.Request) -> web.StreamResponse:
    job, att, listing = await job_items(request)
    if att is None or not listing:
        raise errors.NotFound(f"job {job.id} left no outputs")
    return await send(request, await store_of(request), listing, "", job.id, att.ended_at or job.updated_at)


@routes.get("/api/jobs/{job_id}/outputs/{path:.+}")
async def one(request: web.Request) -> web.StreamResponse:
    job, att, listing = await job_items(request)
    path, chosen = chosen_under(listing, request.match_info["path"], f"job {job.id}")
    return await send(request, await store_of(request), chosen, path, posixpath.basename(path) or job.id,
                      (att.ended_at if att else None) or job.updated_at)
