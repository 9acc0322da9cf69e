"""The JSON API under /api/: what the pages show and do, read and done through the bus client.

    GET  /api/jobs                 the jobs list: ?user=&team=&study=&state=&q=&sort=&limit=&cursor= (cursor pages)
    GET  /api/jobs/{id}            the job with its attempts (its secrets masked, as the controller masks them)
    GET  /api/jobs/{id}/logs       the whole log, streamed as a text download
    GET  /api/jobs/{id}/metrics    points per metric: ?points=&from=&to=&x=step|time
    GET  /api/jobs/{id}/stream     live events (server-sent events; see incl.web.stream)
    POST /api/jobs/{id}/cancel     cancel the job (header X-INCL required: incl.web.guard)
    GET  /api/openapi.json         this, as OpenAPI 3
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator

import msgspec
from aiohttp import web

from incl.proto import errors
from incl.proto.messages import Job, MetricBatch
from incl.web import listing, openapi, summary
from incl.web.errors import BadQuery
from incl.web.logtext import LogText
from incl.web.pointcache import PointCache
from incl.web.sessions import CONFIG, client_of, snapshot_of
from incl.web.stream import JobStream, parse_since

routes = web.RouteTableDef()
POINTS = web.AppKey("points", PointCache)  # jobs' collected metric points, shared by every request


def _json(value: object) -> web.Response:
    return web.Response(body=msgspec.json.encode(value), content_type="application/json")


async def _job(request: web.Request) -> Job:
    """The job the path names; NotFound (404) saying so when the controller has none by that id."""
    job_id = request.match_info["job_id"]
    try:
        return await client_of(request).job(job_id)
    except errors.NotFound:
        raise errors.NotFound(f"no job {job_id}") from None


@routes.get("/api/jobs")
async def jobs(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    query = listing.parse(request.query, cfg.page_default, cfg.page_max)
    page = listing.select(await snapshot_of(request).rows(), query)
    return _json({"jobs": page.rows, "total": page.total, "next": page.next})


@routes.get("/api/jobs/{job_id}")
async def job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    try:
        reply = await client_of(request).job_reply(job_id)
    except errors.NotFound:
        raise errors.NotFound(f"no job {job_id}") from None
    return _json({"job": reply.job, "gpu_util": reply.gpu_util, "gpu_idle_since": reply.gpu_idle_since})


@routes.post("/api/jobs/{job_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    try:
        return _json({"job": await client_of(request).cancel(job_id)})
    except errors.NotFound:
        raise errors.NotFound(f"no job {job_id}") from None


@routes.get("/api/jobs/{job_id}/logs")
async def logs(request: web.Request) -> web.StreamResponse:
    """The whole log, one batch at a time from the stream to the socket: never whole in memory."""
    found = await _job(request)
    client = client_of(request)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/plain; charset=utf-8",
        "Content-Disposition": f'attachment; filename="{found.id}.log"',
    })
    await resp.prepare(request)
    text = LogText(ranks=found.spec.resources.nodes > 1 or any(a.nodes for a in found.attempts))
    async with contextlib.aclosing(client.log_batches(found, follow=False)) as batches:
        async for batch in batches:
            if chunk := text.chunk(batch):
                await resp.write(chunk)
    await resp.write_eof()
    return resp


def _bound(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadQuery(name, "not a number") from None
    if not math.isfinite(value):
        raise BadQuery(name, "not a finite number")
    return value


@routes.get("/api/jobs/{job_id}/metrics")
async def metrics(request: web.Request) -> web.Response:
    cfg = request.app[CONFIG]
    x = request.query.get("x", "step")
    if x not in ("step", "time"):
        raise BadQuery("x", "one of step, time")
    try:
        points = int(request.query.get("points", cfg.metric_points))
    except ValueError:
        raise BadQuery("points", "not a number") from None
    if not 3 <= points <= cfg.metric_points_max:
        raise BadQuery("points", f"must be between 3 and {cfg.metric_points_max}")
    lo, hi = _bound(request, "from"), _bound(request, "to")
    found = await _job(request)  # first: one who may not read the job is refused here, whatever is cached
    client = client_of(request)

    def read(job: Job, attempt: int, seq: int) -> AsyncGenerator[tuple[int, int, MetricBatch], None]:
        return client.metric_batches_after(job, attempt, seq, batch=cfg.metric_pull_batch)

    cache, by_time = request.app[POINTS], x == "time"
    if lo is None and hi is None and not cache.final(found.id, by_time):  # the first chart of an ended run
        reduced = await summary.summaries(client, found)
        if reduced is not None:
            if sum(s.points for r in reduced for s in r.series) <= cache.max_points:  # else it would not be kept
                cache.fill(found, by_time, read)  # for the zooms that follow
            return _json({"x": x, "batches": sum(s.batches for s in reduced), "read": "summary",
                          "metrics": summary.charts(reduced, by_time, points)})
    async with cache.series(found, by_time, read) as held:
        return _json({"x": x, "batches": held.collector.batches, "read": "points",
                      "metrics": held.charts(points, lo, hi)})


@routes.get("/api/jobs/{job_id}/stream")
async def stream(request: web.Request) -> web.StreamResponse:
    since = parse_since(request.headers.get("Last-Event-ID"), "Last-Event-ID") \
        if "Last-Event-ID" in request.headers else parse_since(request.query.get("since"), "since")
    found = await _job(request)
    return await JobStream(client_of(request), request.app[CONFIG], found.id, since).run(request)


@routes.get("/api/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(openapi.DOCUMENT)
