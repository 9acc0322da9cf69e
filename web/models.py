"""The API of the Models pages, read through the bus client like the rest (incl.web.api).

    GET /api/models                every model: its latest version, aliases, versions, when it last changed
    GET /api/models/{name}         one model: every version (newest first) with its lineage, and its aliases
    GET /api/jobs/{id}/models      the versions made from this job (its page links to them)
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

from incl.proto import errors
from incl.proto.registry import ModelRef, ModelVersion
from incl.web.api import _job, _json
from incl.web.metrics import json_number
from incl.web.sessions import client_of

routes = web.RouteTableDef()


def version_json(v: ModelVersion) -> dict[str, Any]:
    """The record as JSON, its final metrics' NaN and infinities as strings (JSON has none)."""
    out: dict[str, Any] = msgspec.to_builtins(v)
    out["lineage"]["metrics"] = {k: json_number(x) for k, x in v.lineage.metrics.items()}
    return out


@routes.get("/api/models")
async def models(request: web.Request) -> web.Response:
    found = await client_of(request).models()
    found.sort(key=lambda m: m.latest.registered_at, reverse=True)
    return _json({"models": [{"name": m.name, "versions": m.versions, "aliases": m.aliases,
                              "updated_at": m.latest.registered_at, "latest": version_json(m.latest)}
                             for m in found]})


@routes.get("/api/models/{name}")
async def model(request: web.Request) -> web.Response:
    client, name = client_of(request), request.match_info["name"]
    try:
        reply, versions = await asyncio.gather(client.model(ModelRef(name)), client.model_versions(name))
    except errors.NotFound:
        raise errors.NotFound(f"no model {name}") from None
    return _json({"name": name, "aliases": reply.aliases,
                  "versions": [version_json(v) for v in sorted(versions, key=lambda v: -v.version)]})


@routes.get("/api/jobs/{job_id}/models")
async def job_models(request: web.Request) -> web.Response:
    found = await _job(request)  # 404 for an unknown job, not an empty list
    versions = await client_of(request).model_versions(job_id=found.id)
    return _json({"versions": [version_json(v) for v in versions]})
