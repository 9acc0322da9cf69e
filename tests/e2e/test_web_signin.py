"""The web UI acts with the signed-in person's rights, never more (issue 15): a server that signs people in gives
each their own bus connection, so the controller and the NATS server apply their rights (own jobs, their teams')."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from authstack import AuthNats, people_nats, start_with_creds
from conftest import Cluster, Daemon, free_port, wait_listening

from incl.bus.client import Client
from incl.proto.messages import JobState
from incl.proto.spec import load_spec
from incl.web.config import WebConfig

PEOPLE = {"alice": (["vision"], [], False), "bob": (["nlp"], [], False), "root": ([], [], True)}
X = {"X-INCL": "1"}


@pytest.fixture
def signin_nats(tmp_path: Path) -> Iterator[AuthNats]:
    with people_nats(tmp_path, PEOPLE) as server:
        yield server


@pytest.fixture
async def stack(signin_nats: AuthNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    monkeypatch.setenv("INCL_HOME", str(signin_nats.home))
    cluster = Cluster(tmp_path, signin_nats)  # type: ignore[arg-type]  # an AuthNats serves as its NatsServer
    start_with_creds(cluster, signin_nats)
    port = free_port()
    cfg = tmp_path / "web.yaml"
    cfg.write_text(yaml.safe_dump({"nats_url": signin_nats.url, "port": port, "sign_in": True,
                                   "creds": str(signin_nats.creds("user", "root"))}))
    web = Daemon("web", [sys.executable, "-m", "incl.web", "--config", str(cfg)], tmp_path / "web.log",
                 cluster.env).start()
    try:
        wait_listening(web, port, timeout=30.0)
        await cluster.wait_agents(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        web.stop()
        cluster.close()


async def test_each_person_sees_and_changes_what_their_rights_allow_and_nothing_without_signing_in(
        stack: str, signin_nats: AuthNats) -> None:
    async with Client(signin_nats.url, creds=signin_nats.creds("user", "alice")) as alice:
        job = await alice.submit(load_spec({"run": "echo alices-line; sleep 60", "name": "alices"}))
    async with aiohttp.ClientSession(stack) as anon:
        async with anon.get("/api/jobs") as resp:
            assert resp.status == 401 and "sign in" in (await resp.json())["error"]
        async with anon.get("/jobs", allow_redirects=False) as resp:
            assert resp.status == 302 and resp.headers["Location"].startswith("/login?next=/jobs")
        async with anon.get("/login") as resp:
            assert resp.status == 200
        async with anon.post("/api/session", json={"creds": "# incl user bob\nSUnotakey"}, headers=X) as resp:
            assert resp.status == 403  # a seed that is no key: refused, with the reason
        agent_creds = signin_nats.creds("agent", "a1").read_text()
        async with anon.post("/api/session", json={"creds": agent_creds}, headers=X) as resp:
            assert resp.status == 403 and "not a user's" in (await resp.json())["error"]
        async with anon.post("/api/session", json={"creds": "x"}) as resp:
            assert resp.status == 403  # no X-INCL: a cross-site form cannot sign anyone in

    async def signed_in(name: str) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(stack, cookie_jar=aiohttp.CookieJar(unsafe=True))  # an IP host
        text = signin_nats.creds("user", name).read_text()
        async with session.post("/api/session", json={"creds": text}, headers=X) as resp:
            assert resp.status == 200 and (await resp.json()) == {"user": name}
            cookie = resp.cookies["incl_session"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        return session

    bob, alice_web = await signed_in("bob"), await signed_in("alice")
    try:
        async with bob.get("/api/session") as resp:
            assert (await resp.json())["user"] == "bob"
        async with bob.get("/api/jobs") as resp:
            assert resp.status == 200 and (await resp.json())["jobs"] == []  # alice's job is not his to see
        async with bob.get(f"/api/jobs/{job.id}") as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == f"not allowed: job {job.id} belongs to alice (team vision)"
        async with bob.post(f"/api/jobs/{job.id}/cancel", headers=X) as resp:
            assert resp.status == 403
        async with bob.get(f"/api/jobs/{job.id}/logs") as resp:
            assert resp.status == 403
        async with alice_web.get("/api/jobs") as resp:
            assert [j["id"] for j in (await resp.json())["jobs"]] == [job.id]
        async with alice_web.post(f"/api/jobs/{job.id}/cancel", headers=X) as resp:
            assert resp.status == 200
        async with bob.delete("/api/session", headers=X) as resp:
            assert resp.status == 200
        async with bob.get("/api/jobs") as resp:
            assert resp.status == 401  # signed out: the session is gone
    finally:
        await bob.close()
        await alice_web.close()
    async with Client(signin_nats.url, creds=signin_nats.creds("user", "root")) as root:
        assert (await root.job(job.id)).state in (JobState.CANCELLED, JobState.RUNNING)  # cancelled by alice


async def test_a_job_s_cached_points_are_refused_to_one_who_may_not_read_it(
        stack: str, signin_nats: AuthNats) -> None:
    """The server keeps a chart's points between requests (incl.web.pointcache); bob still gets 403 for alice's."""
    script = "import incl\nfor s in range(50):\n    incl.log({'loss': s}, step=s)\n"
    async with Client(signin_nats.url, creds=signin_nats.creds("user", "alice")) as alice:
        job = await alice.submit(load_spec({"run": f"{sys.executable} -c \"{script}\"", "name": "alices"}))
        for _ in range(300):
            if (await alice.job(job.id)).state == JobState.SUCCEEDED:
                break
            await asyncio.sleep(0.1)
    bob, alice_web = await _signed_in(stack, signin_nats, "bob"), await _signed_in(stack, signin_nats, "alice")
    try:
        for _ in range(2):  # the second is served from the cache
            async with alice_web.get(f"/api/jobs/{job.id}/metrics") as resp:
                assert resp.status == 200 and (await resp.json())["metrics"]["loss"]["total"] == 50
        async with bob.get(f"/api/jobs/{job.id}/metrics") as resp:
            assert resp.status == 403 and "metrics" not in await resp.json()
        async with bob.get(f"/api/jobs/{job.id}/metrics?x=time") as resp:
            assert resp.status == 403
    finally:
        await bob.close()
        await alice_web.close()


async def _signed_in(stack: str, signin_nats: AuthNats, name: str) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(stack, cookie_jar=aiohttp.CookieJar(unsafe=True))  # an IP host
    async with session.post("/api/session", json={"creds": signin_nats.creds("user", name).read_text()},
                            headers=X) as resp:
        assert resp.status == 200
    return session


def test_a_server_reachable_from_other_hosts_must_sign_people_in() -> None:
    with pytest.raises(ValueError, match="sign_in"):
        WebConfig(host="0.0.0.0")
    assert WebConfig(host="0.0.0.0", sign_in=True).sign_in
