"""The API's OpenAPI 3 document, written by hand next to the routes it describes (incl.web.api)."""

from __future__ import annotations

from typing import Any

_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}, "example": "j-1a2b3c4d"}
_ERROR = {"description": "an error",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_NOT_FOUND = {"404": {**_ERROR, "description": "no job by that id"}}
_BAD_QUERY = {"400": {**_ERROR, "description": "a query parameter the server cannot read (named in `parameter`)"}}


def _query(name: str, description: str, type_: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": type_}, "description": description}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


_ROW = {"type": "object", "required": ["id", "name", "user", "state", "submitted_at", "updated_at"], "properties": {
    "id": {"type": "string"}, "name": {"type": "string"}, "user": {"type": "string"},
    "state": {"type": "string", "enum": ["QUEUED", "ASSIGNED", "STARTING", "RUNNING", "SUCCEEDED", "FAILED",
                                         "CANCELLED", "PREEMPTED", "LOST"]},
    "submitted_at": {"type": "number", "description": "unix time"}, "updated_at": {"type": "number"},
    "attempts": {"type": "integer"}, "recoveries": {"type": "integer"}, "run": {"type": "string"},
    "exit_code": {"type": ["integer", "null"]}, "reason": {"type": ["string", "null"]},
    "study": {"type": ["string", "null"]}, "gpu_util": {"type": ["number", "null"]},
}}
_CHART = {"type": "object", "properties": {
    "x": {"type": "array", "items": {"type": "number"}},
    "y": {"type": "array", "items": {"oneOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}},
    "points": {"type": "integer", "description": "points in the range asked for"},
    "total": {"type": "integer", "description": "points of the metric in all"},
    "downsampled": {"type": "boolean", "description": "min/max per bucket stand for the points"},
}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "INCL web API", "version": "1",
             "description": "What the INCL web UI shows and does. Everything is read from the controller through "
                            "the bus client; requests that change state need the `X-INCL` header and a same-origin "
                            "`Origin`."},
    "paths": {
        "/api/jobs": {"get": {
            "summary": "Jobs, a page at a time",
            "parameters": [
                _query("user", "only these users' jobs (comma-separated)"),
                _query("team", "only these teams' jobs (comma-separated)"),
                _query("study", "only the trials of these HPO studies (comma-separated)"),
                _query("state", "only jobs in these states (comma-separated)"),
                _query("q", "text in the id, name, user, command or study"),
                _query("sort", "submitted, updated, name, user or state; a leading - for descending "
                               "(default -submitted)"),
                _query("limit", "jobs per page", "integer"),
                _query("cursor", "the previous page's `next`"),
            ],
            "responses": {**_json({"type": "object", "properties": {
                "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/JobRow"}},
                "total": {"type": "integer", "description": "jobs matching the filters"},
                "next": {"type": ["string", "null"], "description": "cursor of the next page; null on the last"},
            }}, "a page of jobs"), **_BAD_QUERY},
        }},
        "/api/jobs/{job_id}": {"get": {
            "summary": "One job with every attempt; secret values are shown as <secret>",
            "parameters": [_JOB_ID],
            "responses": {**_json({"type": "object", "properties": {
                "job": {"type": "object", "description": "the job record, as `incl show --json` prints it"},
                "gpu_util": {"type": ["number", "null"]}, "gpu_idle_since": {"type": ["number", "null"]},
            }}, "the job"), **_NOT_FOUND},
        }},
        "/api/jobs/{job_id}/logs": {"get": {
            "summary": "The whole log as a download: stdout and stderr in order, --- attempt N --- between attempts",
            "parameters": [_JOB_ID],
            "responses": {"200": {"description": "the log", "content": {"text/plain": {}}}, **_NOT_FOUND},
        }},
        "/api/jobs/{job_id}/metrics": {"get": {
            "summary": "Each metric's points, reduced to min/max per bucket above `points`",
            "parameters": [_JOB_ID, _query("points", "at most about this many per metric", "integer"),
                           _query("from", "only x >= this", "number"), _query("to", "only x <= this", "number"),
                           _query("x", "step (default) or time")],
            "responses": {**_json({"type": "object", "properties": {
                "x": {"type": "string"}, "batches": {"type": "integer",
                                                     "description": "metric batches read: `since` for /stream"},
                "read": {"type": "string", "enum": ["summary", "points"],
                         "description": "from the attempts' metric summaries (the whole run of an ended job, the "
                                        "first time) or from the points themselves"},
                "metrics": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Chart"}},
            }}, "the metrics"), **_NOT_FOUND, **_BAD_QUERY},
        }},
        "/api/jobs/{job_id}/stream": {"get": {
            "summary": "Live events (server-sent events): `log`, `metric`, `job` (the record when it changes) and "
                       "`end`. Event ids are <logs>.<metrics>; reconnecting with Last-Event-ID resumes after it. "
                       "A client that does not keep up is disconnected.",
            "parameters": [_JOB_ID, _query("since", "skip this many log and metric batches: <logs>.<metrics>")],
            "responses": {"200": {"description": "the event stream", "content": {"text/event-stream": {}}},
                          **_NOT_FOUND, **_BAD_QUERY},
        }},
        "/api/jobs/{job_id}/cancel": {"post": {
            "summary": "Cancel the job",
            "parameters": [_JOB_ID, {"name": "X-INCL", "in": "header", "required": True,
                                     "schema": {"type": "string"}}],
            "responses": {**_json({"type": "object"}, "the job, cancel requested"), **_NOT_FOUND,
                          "403": {**_ERROR, "description": "a cross-site request"},
                          "409": {**_ERROR, "description": "the job has already ended"}},
        }},
        "/api/openapi.json": {"get": {"summary": "This document", "responses": _json({"type": "object"}, "it")}},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string"}, "parameter": {"type": "string"}}},
        "JobRow": _ROW,
        "Chart": _CHART,
    }},
}

# The Compare, Study and Cluster pages (incl.web.views).
_STUDY_ID = {"name": "study_id", "in": "path", "required": True, "schema": {"type": "string"}, "example": "s-1a2b3c4d"}
_OBJECT = {"type": "object"}
DOCUMENT["paths"].update({
    "/api/compare": {"get": {
        "summary": "Jobs side by side: who and what each is, HPO params, env and final metrics (the last value "
                   "logged), one row each, `differs` where the values shown differ. Charts: /api/jobs/{id}/metrics",
        "parameters": [{**_query("jobs", "job ids, comma-separated (at most `compare_max`, 10)"), "required": True}],
        "responses": {**_json({"type": "object", "properties": {
            "jobs": {"type": "array", "items": _OBJECT, "description": "id, name, state, user, study, in order"},
            "rows": {"type": "array", "items": {"type": "object", "properties": {
                "kind": {"type": "string", "enum": ["job", "param", "env", "metric"]}, "key": {"type": "string"},
                "values": {"type": "array", "items": {"type": "string"}, "description": "one per job"},
                "differs": {"type": "boolean"}}}},
            "final": {"type": "array", "description": "per job: metric -> {value, step, points}",
                      "items": {"type": "object", "additionalProperties": _OBJECT}},
        }}, "the comparison"), **{"404": {**_ERROR, "description": "no job by one of the ids (named)"}},
            **_BAD_QUERY},
    }},
    "/api/studies": {"get": {
        "summary": "HPO studies, newest first: each with its trial counts by state, best value and trial, GPU hours",
        "parameters": [_query("user", "only this user's studies")],
        "responses": _json({"type": "object", "properties": {"studies": {"type": "array", "items": _OBJECT}}},
                           "the studies"),
    }},
    "/api/studies/{study_id}": {"get": {
        "summary": "One study: `summary` (as in the list), `trials` (number, state, params, value, job_id, ...), "
                   "`best_so_far` (the best value after each finished trial), `importances` (param -> weight, once "
                   "4 trials finished)",
        "parameters": [_STUDY_ID],
        "responses": {**_json(_OBJECT, "the study"), "404": {**_ERROR, "description": "no study by that id"}},
    }},
    "/api/cluster": {"get": {
        "summary": "The agents (capacity, what is allocated, their jobs, each GPU's last readings), the jobs whose "
                   "GPUs are idle (`idle`: since when), and quota use per user and team",
        "responses": _json({"type": "object", "properties": {
            "now": {"type": "number"}, "agents": {"type": "array", "items": _OBJECT},
            "idle": {"type": "array", "items": _OBJECT}, "quota": {"type": "array", "items": _OBJECT}}},
            "the cluster"),
    }},
})


# --- outputs and share links (incl.web.files, incl.web.shares) ------------------------------------------------

_ATTEMPT = _query("attempt", "another attempt's outputs (default: the last one that left some)", "integer")
_PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "a file or folder in the outputs, e.g. ckpt/best.pt"}
_SHARE = {"type": "object", "description": "the share's record (proto/shares.py): id, kind (output, folder, model), "
          "target, created_by, created_at, expires_at, revoked, files, bytes"}
_DOWNLOAD = {"200": {"description": "streamed, with its Content-Length: a file's bytes, or a folder as a tar archive",
                     "content": {"application/octet-stream": {}, "application/x-tar": {}}}}
_POST_ONLY = {"name": "X-INCL", "in": "header", "required": True, "schema": {"type": "string"}}
_CROSS_SITE = {"403": {**_ERROR, "description": "a cross-site request, or the caller may not"}}

DOCUMENT["paths"].update({
    "/api/jobs/{job_id}/outputs": {"get": {
        "summary": "The job's stored outputs: every file, folder and link, sorted by path",
        "parameters": [_JOB_ID, _ATTEMPT],
        "responses": {**_json({"type": "object", "properties": {
            "attempt": {"type": ["integer", "null"], "description": "whose outputs; null: the job left none"},
            "bytes": {"type": "integer"},
            "files": {"type": "array", "items": {"type": "object", "properties": {
                "path": {"type": "string"}, "size": {"type": "integer"},
                "kind": {"type": "string", "enum": ["file", "dir", "symlink"]}}}},
        }}, "the outputs"), **_NOT_FOUND, **_BAD_QUERY},
    }},
    "/api/jobs/{job_id}/outputs/{path}": {"get": {
        "summary": "One output file, or a folder of them as <folder>.tar, streamed",
        "parameters": [_JOB_ID, _PATH, _ATTEMPT], "responses": {**_DOWNLOAD, **_NOT_FOUND},
    }},
    "/api/jobs/{job_id}/outputs.tar": {"get": {
        "summary": "Every output as <job>.tar, streamed", "parameters": [_JOB_ID, _ATTEMPT],
        "responses": {**_DOWNLOAD, **_NOT_FOUND},
    }},
    "/api/shares": {
        "post": {"summary": "A share link to an output, a folder or a model version",
                 "parameters": [_POST_ONLY],
                 "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                     "job": {"type": "string"}, "path": {"type": "string", "description": "\"\": every output"},
                     "model": {"type": "string"}, "version": {"type": "integer"},
                     "expires": {"type": ["string", "number"], "description": "24h, 7d, or seconds (default 7d)"},
                 }}}}},
                 "responses": {**_json({"type": "object", "properties": {"share": _SHARE, "url": {
                     "type": "string", "description": "the link: <web url>/s/<id>.<signature>"}}}, "the share"),
                     **_NOT_FOUND, **_CROSS_SITE}},
        "get": {"summary": "The shares this server's identity made, newest first",
                "responses": _json({"type": "object", "properties": {"shares": {"type": "array", "items": _SHARE}}},
                                   "the shares")},
    },
    "/api/shares/{share_id}/revoke": {"post": {
        "summary": "Revoke a share: its link stops opening at once",
        "parameters": [{"name": "share_id", "in": "path", "required": True, "schema": {"type": "string"}},
                       _POST_ONLY],
        "responses": {**_json({"type": "object", "properties": {"share": _SHARE}}, "the share, revoked"),
                      **_NOT_FOUND, **_CROSS_SITE},
    }},
})

# --- signing in (incl.web.sessions) ----------------------------------------------------------------------------

_WHO = {"type": "object", "properties": {"user": {"type": ["string", "null"]}, "sign_in": {"type": "boolean"}}}
DOCUMENT["paths"].update({
    "/api/session": {
        "get": {"summary": "Whom requests act as: the signed-in person (null: nobody yet), or the server's own "
                           "identity when it signs nobody in",
                "responses": _json(_WHO, "who")},
        "post": {"summary": "Sign in with an INCL credential file (its text, or JSON {\"creds\": text}): sets the "
                            "session cookie (HttpOnly, SameSite=Strict); every request then acts with that user's "
                            "rights. 401 on any other /api/ request without a session",
                 "parameters": [{"name": "X-INCL", "in": "header", "required": True, "schema": {"type": "string"}}],
                 "responses": {**_json({"type": "object", "properties": {"user": {"type": "string"}}}, "signed in"),
                               "403": {**_ERROR, "description": "not a user's credentials, refused by the NATS "
                                                                "server, or a cross-site request"}}},
        "delete": {"summary": "Sign out: the session's connection and key are dropped",
                   "parameters": [{"name": "X-INCL", "in": "header", "required": True,
                                   "schema": {"type": "string"}}],
                   "responses": _json({"type": "object"}, "signed out")},
    },
})

# The Models pages (incl.web.models).
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "example": "resnet"}
_VERSION = {"type": "object", "description": "a registered version, as `incl model show --json` prints it "
                                             "(lineage.metrics: NaN and infinities as strings)"}
DOCUMENT["paths"].update({
    "/api/models": {"get": {
        "summary": "Every model, the most recently registered first: its latest version, how many versions, its "
                   "aliases (alias -> version) and `updated_at` (the latest version's registration)",
        "responses": _json({"type": "object", "properties": {"models": {"type": "array", "items": {
            "type": "object", "properties": {
                "name": {"type": "string"}, "versions": {"type": "integer"}, "updated_at": {"type": "number"},
                "aliases": {"type": "object", "additionalProperties": {"type": "integer"}}, "latest": _VERSION}}}}},
            "the models"),
    }},
    "/api/models/{name}": {"get": {
        "summary": "One model: every version, newest first, each with its files, lineage (job, code, image, "
                   "params, final metrics), who registered it and when, and its note; its aliases",
        "parameters": [_NAME],
        "responses": {**_json({"type": "object", "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": _VERSION},
            "aliases": {"type": "object", "additionalProperties": {"type": "integer"}}}}, "the model"),
            "404": {**_ERROR, "description": "no model by that name"}},
    }},
    "/api/jobs/{job_id}/models": {"get": {
        "summary": "The model versions made from this job",
        "parameters": [_JOB_ID],
        "responses": {**_json({"type": "object", "properties": {
            "versions": {"type": "array", "items": _VERSION}}}, "the versions"), **_NOT_FOUND},
    }},
})
