"""The web server's JSON API against a real stack (nats-server, controller, agent and `python -m incl.web` as
processes): every endpoint, its errors, live events with resume, a slow client dropped, and cross-site refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from conftest import wait_for
from webstack import WebStack, web_stack

from incl.proto.messages import JobState

PY = sys.executable
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    with web_stack(tmp_path_factory.mktemp("web")) as s:
        yield s


@pytest.fixture
async def http(stack: WebStack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(stack.url) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200) -> Any:
    async with http.get(path) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


async def events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, str]]:
    """Server-sent events as dicts (id, event, data), read as a browser reads them."""
    event: dict[str, str] = {}
    buffer = b""
    async for chunk in resp.content.iter_any():  # an event may be larger than aiohttp's longest line
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode()
            if not line:
                if "event" in event:
                    yield event
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                event[name] = value


async def test_jobs_list_pages_newest_first_filters_and_refuses_bad_queries(stack: WebStack,
                                                                            http: aiohttp.ClientSession) -> None:
    ids = [(await stack.cluster.submit("true", user=user, name=name, **({"team": team} if team else {}))).id
           for user, name, team in [("ann", "alpha", None), ("bob", "beta", "nlp"), ("ann", "gamma-search", None)]]
    for job_id in ids:
        await stack.cluster.wait_done(job_id)

    async def listed() -> Any:
        page = await get_json(http, "/api/jobs?limit=2")
        return page if page["total"] >= 3 and all(r["state"] == "SUCCEEDED" for r in page["jobs"]) else None

    first = await wait_for(listed, 10, "the jobs to be listed")
    assert [r["id"] for r in first["jobs"]] == ids[:-3:-1]  # newest first
    second = await get_json(http, f"/api/jobs?limit=2&cursor={first['next']}")
    assert ids[0] in [r["id"] for r in second["jobs"]] and not set(ids[1:]) & {r["id"] for r in second["jobs"]}
    ann = await get_json(http, "/api/jobs?user=ann&sort=name")
    assert [r["name"] for r in ann["jobs"]] == ["alpha", "gamma-search"]
    assert [r["id"] for r in (await get_json(http, "/api/jobs?q=GAMMA"))["jobs"]] == [ids[2]]
    assert (await get_json(http, "/api/jobs?state=RUNNING,QUEUED"))["total"] == 0
    assert [r["id"] for r in (await get_json(http, "/api/jobs?team=nlp"))["jobs"]] == [ids[1]]
    assert (await get_json(http, "/api/jobs?team=nlp,vision&user=ann"))["total"] == 0
    for query, parameter in [("state=DONE", "state"), ("limit=0", "limit"), ("limit=x", "limit"),
                             ("sort=colour", "sort"), ("cursor=%%%", "cursor")]:
        bad = await get_json(http, f"/api/jobs?{query}", 400)
        assert bad["parameter"] == parameter and parameter in bad["error"], bad


async def test_job_shows_attempts_with_secrets_masked_and_unknown_job_is_404(stack: WebStack,
                                                                             http: aiohttp.ClientSession) -> None:
    job = await stack.cluster.submit("echo hi", secrets={"API_KEY": "hunter2-value"}, env={"MODE": "fast"})
    await stack.cluster.wait_done(job.id)
    async with http.get(f"/api/jobs/{job.id}") as resp:
        text = await resp.text()
        assert resp.status == 200
    assert "hunter2-value" not in text
    shown = json.loads(text)["job"]
    assert shown["spec"]["secrets"] == {"API_KEY": "<secret>"} and shown["spec"]["env"] == {"MODE": "fast"}
    [attempt] = shown["attempts"]
    assert attempt["agent_id"] == "a1" and attempt["exit_code"] == 0 and attempt["started_at"]
    for path in ["", "/logs", "/metrics", "/stream"]:
        assert await get_json(http, f"/api/jobs/j-nothere{path}", 404) == {"error": "no job j-nothere"}
    async with http.post("/api/jobs/j-nothere/cancel", headers={"X-INCL": "1"}) as resp:
        assert resp.status == 404 and await resp.json() == {"error": "no job j-nothere"}


async def test_log_download_is_the_whole_log_in_order(stack: WebStack, http: aiohttp.ClientSession) -> None:
    script = ("import sys\nfor i in range(5000):\n"
              "    print(f'line {i}', file=sys.stderr if i % 7 == 0 else sys.stdout, flush=True)\n")
    job = await stack.cluster.submit(f"{PY} -c \"{script}\"")
    await stack.cluster.wait_done(job.id)
    async with http.get(f"/api/jobs/{job.id}/logs") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == f'attachment; filename="{job.id}.log"'
        body = await resp.text()
    lines = body.splitlines()
    # stdout and stderr come through two pipes: each in order, and all of both
    assert sorted(lines, key=lambda x: int(x.split()[1])) == [f"line {i}" for i in range(5000)]
    assert [x for x in lines if int(x.split()[1]) % 7 == 0] == [f"line {i}" for i in range(0, 5000, 7)]
    assert [x for x in lines if int(x.split()[1]) % 7] == [f"line {i}" for i in range(5000) if i % 7]


async def test_metrics_are_downsampled_keeping_extremes_and_full_resolution_in_a_range(
        stack: WebStack, http: aiohttp.ClientSession) -> None:
    script = ("import incl, math\n"
              "for s in range(6000):\n"
              "    loss = 100.0 if s == 4321 else 1.0 / (s + 1)\n"
              "    incl.log({'loss': loss, 'odd': math.nan if s == 10 else s}, step=s)\n")
    job = await stack.cluster.submit(f"{PY} -c \"{script}\"")
    await stack.cluster.wait_done(job.id)
    # The first chart of the ended run comes from the attempt's summary (one message), then from the points the
    # server reads meanwhile: the same extremes, gaps and counts either way.
    async def chart_read(read: str) -> Any:
        body = await get_json(http, f"/api/jobs/{job.id}/metrics?points=300")
        return body if body["read"] == read else None

    for read in ("summary", "points"):
        full = await (chart_read(read) if read == "summary" else
                      wait_for(lambda: chart_read("points"), what="the points read into the server's cache"))
        assert full is not None, "the first chart of an ended run is not read from its summary"
        loss = full["metrics"]["loss"]
        assert loss["downsampled"] and loss["points"] == loss["total"] == 6000 and len(loss["x"]) <= 300
        assert 100.0 in loss["y"] and 1.0 / 6000 in loss["y"] and loss["x"] == sorted(loss["x"])
        assert "NaN" in full["metrics"]["odd"]["y"]
        zoom = await get_json(http, f"/api/jobs/{job.id}/metrics?points=300&from=4300&to=4399")
        assert zoom["metrics"]["loss"]["x"] == [float(s) for s in range(4300, 4400)] and zoom["read"] == "points"
        assert not zoom["metrics"]["loss"]["downsampled"] and zoom["batches"] == full["batches"] > 0
    for query, parameter in [("points=2", "points"), ("from=abc", "from"), ("to=nan", "to"), ("x=epoch", "x")]:
        assert (await get_json(http, f"/api/jobs/{job.id}/metrics?{query}", 400))["parameter"] == parameter


async def test_a_running_job_s_chart_gets_the_points_logged_since_and_all_once_it_has_ended(
        stack: WebStack, http: aiohttp.ClientSession) -> None:
    """The server keeps what it read of a running job's metrics and reads only what came after: nothing is
    missed or counted twice."""
    script = ("import incl, time\n"
              "for s in range(300):\n"
              "    incl.log({'loss': s}, step=s)\n"
              "    if s in (99, 199):\n"
              "        time.sleep(2)\n")
    job = await stack.cluster.submit(f"{PY} -c \"{script}\"")
    seen: list[int] = []
    for _ in range(400):
        body = await get_json(http, f"/api/jobs/{job.id}/metrics")
        total = body["metrics"]["loss"]["total"] if body["metrics"] else 0
        assert body["metrics"] == {} or body["metrics"]["loss"]["x"] == [float(s) for s in range(total)]
        seen.append(total)
        if total == 300:
            break
        await asyncio.sleep(0.05)
    assert seen == sorted(seen) and 300 in seen and len({t for t in seen if 0 < t < 300}) >= 1
    await stack.cluster.wait_done(job.id)
    for x in ("step", "time"):
        body = await get_json(http, f"/api/jobs/{job.id}/metrics?x={x}")
        assert body["metrics"]["loss"]["y"] == [float(s) for s in range(300)]


LIVE = ("import incl, sys, time\n"
        "i = 0\n"
        "while True:\n"
        "    print(f'tick {i}', flush=True)\n"
        "    incl.log({'loss': 1.0 / (i + 1)}, step=i)\n"
        "    i += 1\n"
        "    time.sleep(0.05)\n")


async def test_stream_sends_lines_metrics_and_states_and_resumes_from_last_event_id(
        stack: WebStack, http: aiohttp.ClientSession) -> None:
    job = await stack.cluster.submit(f"{PY} -c \"{LIVE}\"", name="live")
    lines: list[str] = []
    steps: list[int] = []
    states: list[str] = []
    last_id = ""

    async def read(headers: dict[str, str], stop_after: int | None) -> bool:
        """Until `stop_after` lines more (then hang up), or the stream's end; True at the end."""
        nonlocal last_id
        want = len(lines) + stop_after if stop_after is not None else None
        async with http.get(f"/api/jobs/{job.id}/stream", headers=headers) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
            async for ev in events(resp):
                last_id = ev.get("id", last_id)
                data = json.loads(ev["data"])
                if ev["event"] == "log":
                    lines.extend(line[2] for line in data["lines"])
                elif ev["event"] == "metric":
                    steps.extend(p[1] for p in data["points"])
                elif ev["event"] == "job":
                    states.append(data["state"])
                elif ev["event"] == "end":
                    return True
                if want is not None and len(lines) >= want:
                    return False
        raise AssertionError("the stream closed without an end event")

    assert not await read({}, stop_after=10)
    await asyncio.sleep(0.5)  # lines written while no one is connected come on reconnect
    assert not await read({"Last-Event-ID": last_id}, stop_after=10)
    async with http.post(f"/api/jobs/{job.id}/cancel", headers={"X-INCL": "1"}) as resp:
        assert resp.status == 200, await resp.text()
    assert await read({"Last-Event-ID": last_id}, stop_after=None)
    ticks = [ln for ln in lines if ln.startswith("tick")]
    assert ticks == [f"tick {i}" for i in range(len(ticks))]  # nothing lost or repeated across three connections
    assert steps == list(range(len(steps))) and len(steps) >= 20
    assert "RUNNING" in states and states[-1] == "CANCELLED"
    assert (await stack.cluster.job(job.id)).state is JobState.CANCELLED


def dechunk(raw: bytes) -> bytes:
    """The body of an HTTP/1.1 chunked response, as far as it got (a stream cut short ends mid-chunk)."""
    body, rest = b"", raw.split(b"\r\n\r\n", 1)[1]
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return body


async def test_a_client_that_stops_reading_is_dropped_and_resumes_while_others_stream_on(
        stack: WebStack, http: aiohttp.ClientSession) -> None:
    n, pad = 150000, "x" * 60
    script = f"import sys\nfor i in range({n}):\n    print(f'line {{i:06d}} {pad}')\n"
    job = await stack.cluster.submit(f"{PY} -c \"{script}\"")
    # A client that reads nothing: once the socket buffers are full, its queue stays full and it is dropped.
    stalled = socket.create_connection(("127.0.0.1", stack.port))
    stalled.sendall(f"GET /api/jobs/{job.id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    # Meanwhile another client gets every line, to the end.
    got = 0
    async with http.get(f"/api/jobs/{job.id}/stream") as resp:
        async for ev in events(resp):
            if ev["event"] == "log":
                got += sum(1 for line in json.loads(ev["data"])["lines"] if line[1] == 1)
            if ev["event"] == "end":
                break
    assert got == n
    await wait_for(lambda: "web_stream_dropped" in stack.web.output(), 20, "the stalled client to be dropped")
    # Reading at last, the stalled client finds its stream cut short: no end event.
    stalled.settimeout(10)
    raw = b""
    with contextlib.suppress(ConnectionResetError):  # cut at once: the rest of what it had sent is discarded
        while chunk := await asyncio.to_thread(stalled.recv, 1 << 20):
            raw += chunk
    stalled.close()
    parsed = [dict(f.split(": ", 1) for f in block.split("\n") if f and not f.startswith(":") and ": " in f)
              for block in dechunk(raw).decode(errors="replace").split("\n\n")]
    whole = [e for e in parsed if "data" in e and e.get("event") == "log" and e["data"].endswith("]]}")]
    assert whole and not any(e.get("event") == "end" for e in parsed)
    lines = [ln[2] for e in whole for ln in json.loads(e["data"])["lines"] if ln[1] == 1]
    # It reconnects from its last event and gets the rest: every line once.
    async with http.get(f"/api/jobs/{job.id}/stream", headers={"Last-Event-ID": whole[-1]["id"]}) as resp:
        async for ev in events(resp):
            if ev["event"] == "log":
                lines += [ln[2] for ln in json.loads(ev["data"])["lines"] if ln[1] == 1]
            if ev["event"] == "end":
                break
    assert lines == [f"line {i:06d} {pad}" for i in range(n)]


async def test_cancel_refuses_cross_site_requests(stack: WebStack, http: aiohttp.ClientSession) -> None:
    job = await stack.cluster.submit("sleep 60")
    await stack.cluster.wait_state(job.id, {"RUNNING"})
    own = stack.url
    for headers, why in [({}, "X-INCL"),
                         ({"X-INCL": "1", "Origin": "http://evil.example"}, "Origin"),
                         ({"X-INCL": "1", "Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
                         ({"X-INCL": "1", "Host": "evil.example"}, "Host")]:
        async with http.post(f"/api/jobs/{job.id}/cancel", headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 403 and why in body["error"], body
    assert (await stack.cluster.job(job.id)).state == "RUNNING"
    async with http.post(f"/api/jobs/{job.id}/cancel",
                         headers={"X-INCL": "1", "Origin": own, "Sec-Fetch-Site": "same-origin"}) as resp:
        assert resp.status == 200 and (await resp.json())["job"]["cancel_requested"]
    assert (await stack.cluster.wait_done(job.id)).state == "CANCELLED"
    async with http.post(f"/api/jobs/{job.id}/cancel", headers={"X-INCL": "1"}) as resp:
        assert resp.status == 409, await resp.text()


async def test_openapi_documents_every_api_route(stack: WebStack, http: aiohttp.ClientSession) -> None:
    from incl.web.app import make_app
    from incl.web.config import WebConfig

    doc = await get_json(http, "/api/openapi.json")
    assert doc["openapi"].startswith("3.")
    served = {(r.method.lower(), r.resource.canonical) for r in make_app(WebConfig()).router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert served == documented


def test_pages_are_served_with_a_script_only_from_self_policy(stack: WebStack) -> None:
    import urllib.request

    for path in ["/jobs", "/jobs/j-anything", "/static/vendor/uplot/uPlot.iife.min.js"]:
        with urllib.request.urlopen(stack.url + path) as resp:
            assert resp.status == 200
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
