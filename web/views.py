"""The API of the Compare, Study and Cluster pages, read through the bus client like the rest (incl.web.api).

    GET /api/compare?jobs=a,b      the jobs side by side: params, env and final metrics, differences marked
    GET /api/studies               every study, newest first: ?user=
    GET /api/studies/{id}          one study: summary, trials, best-so-far curve, parameter importances
    GET /api/cluster               agents with their GPUs' readings, idle GPU alerts, quota
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from incl.bus.client import Client
from incl.proto import errors
from incl.proto.messages import Job
from incl.web import cluster, compare
from incl.web.api import _json
from incl.web.metrics import Collector
from incl.web.sessions import CONFIG, client_of

routes = web.RouteTableDef()


async def _job(client: Client, job_id: str) -> Job:
    try:
        return await client.job(job_id)
    except errors.NotFound:
        raise errors.NotFound(f"no job {job_id}") from None


async def _finals(client: Client, job_id: str) -> dict[str, compare.Final]:
    collector = Collector()
    async with contextlib.aclosing(client.metric_batches(job_id)) as read:
        async for batch in read:
            collector.add(batch)
    return compare.finals(collector.series())


@routes.get("/api/compare")
async def compare_jobs(request: web.Request) -> web.Response:
    client, cfg = client_of(request), request.app[CONFIG]
    ids = compare.job_ids(request.query.get("jobs"), cfg.compare_max)
    jobs = await asyncio.gather(*(_job(client, i) for i in ids))
    finals = await asyncio.gather(*(_finals(client, j.id) for j in jobs))
    return _json({"jobs": [{"id": j.id, "name": j.spec.name or "", "state": j.state, "user": j.user,
                            "study": j.trial.study_id if j.trial else None} for j in jobs],
                  "rows": compare.table(jobs, finals), "final": finals})


@routes.get("/api/studies")
async def studies(request: web.Request) -> web.Response:
    found = await client_of(request).studies(user=request.query.get("user") or None)
    return _json({"studies": sorted(found, key=lambda s: s.study.created_at, reverse=True)})


@routes.get("/api/studies/{study_id}")
async def study(request: web.Request) -> web.Response:
    study_id = request.match_info["study_id"]
    try:
        reply = await client_of(request).study(study_id)
    except errors.NotFound:
        raise errors.NotFound(f"no study {study_id}") from None
    return _json({"summary": reply.summary, "trials": reply.trials, "best_so_far": reply.best_so_far,
                  "importances": reply.importances})


@routes.get("/api/cluster")
async def cluster_view(request: web.Request) -> web.Response:
    return _json(await cluster.read(client_of(request), request.app[CONFIG].cluster_idle_reads))
