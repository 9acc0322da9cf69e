"""EC2 instance metadata: the IMDSv2 fake behaves as the service does, the agent's client follows the token
protocol against it, and the spot watcher calls back once per notice."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import msgspec
import pytest
from imds import TOKEN_HEADER, TTL_HEADER, FakeClock, FakeImds, Instance, Request
from structlog.testing import capture_logs

from incl.agent.metadata import (
    Imds,
    InstanceAction,
    InstanceIdentity,
    LocalMetadata,
    MetadataConfig,
    MetadataError,
    open_metadata,
)
from incl.agent.spotwatch import Interruption, Rebalance, SpotNotice, SpotWatchConfig, SpotWatcher

FAST = MetadataConfig(timeout=1.0, attempts=3, retry_initial=0.01, retry_max=0.02)
SPOT = Instance(instance_id="i-0aaa", instance_type="p4d.24xlarge", availability_zone="us-east-1b",
                lifecycle="spot", local_ipv4="10.1.2.3")
ON_DEMAND = Instance(instance_id="i-0bbb", instance_type="g5.xlarge", lifecycle="on-demand")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def imds(clock: FakeClock) -> AsyncIterator[FakeImds]:
    async with FakeImds(clock=clock) as fake:
        yield fake


def seen(imds: FakeImds, instance_id: str = "i-0aaa") -> list[tuple[str, str, int]]:
    return [(r.method, r.path.removeprefix("/latest/"), r.status) for r in imds.requests
            if r.instance_id == instance_id]


# --- the fake is faithful -------------------------------------------------------------------------------------


async def test_fake_enforces_the_token_protocol(imds: FakeImds, clock: FakeClock) -> None:
    """TTL header required and in 1..21600; 405, 403 as EC2; missing, wrong-instance, expired tokens are 401."""
    a = await imds.add(SPOT)
    b = await imds.add(ON_DEMAND)
    async with aiohttp.ClientSession() as http:
        async def put(url: str, **headers: str) -> tuple[int, str]:
            async with http.put(f"{url}/latest/api/token", headers=headers) as r:
                return r.status, await r.text()

        async def get(url: str, path: str = "instance-id", token: str | None = None) -> int:
            async with http.get(f"{url}/latest/meta-data/{path}",
                                headers={TOKEN_HEADER: token} if token else {}) as r:
                return r.status

        assert [(await put(a, **h))[0] for h in ({}, {TTL_HEADER: "0"}, {TTL_HEADER: "21601"},
                                                  {TTL_HEADER: "ten"})] == [400, 400, 400, 400]
        assert (await put(a, **{TTL_HEADER: "60", "X-Forwarded-For": "10.0.0.1"}))[0] == 403
        async with http.get(f"{a}/latest/api/token") as r:
            assert r.status == 405
        status, token = await put(a, **{TTL_HEADER: "60"})
        assert status == 200 and token
        assert [await get(a), await get(a, token="forged"), await get(b, token=token), await get(a, token=token)] \
            == [401, 401, 401, 200]
        assert await get(a, "spot/instance-action", token) == 404
        clock.advance(60)
        assert await get(a, token=token) == 401  # expired


async def test_fake_without_required_tokens_still_refuses_a_bad_one(clock: FakeClock) -> None:
    """IMDSv1 allowed: no token is fine, an invalid token is still 401."""
    async with FakeImds(tokens_required=False, clock=clock) as imds, aiohttp.ClientSession() as http:
        url = await imds.add(SPOT)
        async with http.get(f"{url}/latest/meta-data/instance-type") as r:
            assert (r.status, await r.text()) == (200, "p4d.24xlarge")
        async with http.get(f"{url}/latest/meta-data/instance-type", headers={TOKEN_HEADER: "x"}) as r:
            assert r.status == 401


# --- the client -------------------------------------------------------------------------------------------------


async def test_identity_of_each_instance_over_one_token(imds: FakeImds, clock: FakeClock) -> None:
    """Two instances, two endpoints: each reads its own values; one PUT, then every GET carries the token."""
    for inst in (SPOT, ON_DEMAND):
        endpoint = await imds.add(inst)
        async with Imds(MetadataConfig(endpoint=endpoint), clock=clock) as md:
            got = await md.identity()
            assert await md.identity() == got
    assert got == InstanceIdentity(instance_id="i-0bbb", instance_type="g5.xlarge",
                                   availability_zone="us-east-1a", lifecycle="on-demand", local_ipv4="10.0.0.10")
    spot = [r for r in imds.requests if r.instance_id == "i-0aaa"]
    assert [r.method for r in spot] == ["PUT"] + ["GET"] * 10
    assert all(r.token and r.status == 200 for r in spot[1:])


async def test_token_renewed_before_it_expires(imds: FakeImds, clock: FakeClock) -> None:
    """TTL 60 s, renewed 10 s early: a read at 49 s reuses it, at 51 s a new token comes first, no 401 ever."""
    endpoint = await imds.add(SPOT)
    cfg = MetadataConfig(endpoint=endpoint, token_ttl=60, token_refresh_before=10)
    async with Imds(cfg, clock=clock) as md:
        await md.get("instance-id")
        clock.advance(49)
        await md.get("instance-id")
        clock.advance(2)
        await md.get("instance-id")
    assert seen(imds) == [("PUT", "api/token", 200), ("GET", "meta-data/instance-id", 200),
                          ("GET", "meta-data/instance-id", 200),
                          ("PUT", "api/token", 200), ("GET", "meta-data/instance-id", 200)]


async def test_a_refused_token_is_renewed_once(imds: FakeImds, clock: FakeClock) -> None:
    """A 401 (token revoked) gets one new token and the read succeeds; a second 401 is an error, not a loop."""
    endpoint = await imds.add(SPOT)
    async with Imds(MetadataConfig(endpoint=endpoint), clock=clock) as md:
        await md.get("instance-id")
        imds.revoke("i-0aaa")
        assert await md.get("instance-type") == "p4d.24xlarge"
        assert seen(imds)[2:] == [("GET", "meta-data/instance-type", 401), ("PUT", "api/token", 200),
                                  ("GET", "meta-data/instance-type", 200)]
        imds.reject_tokens = True
        with pytest.raises(MetadataError, match="HTTP 401"):
            await md.get("instance-type")
        assert [s for _, _, s in seen(imds)[5:]] == [401, 200, 401]


async def test_spot_notice_and_rebalance_absent_then_fixed(imds: FakeImds, clock: FakeClock) -> None:
    """404 means none; after the notice, the action and a time exactly 120 s after it, on every read."""
    endpoint = await imds.add(SPOT)
    async with Imds(MetadataConfig(endpoint=endpoint), clock=clock) as md:
        assert (await md.spot_notice(), await md.rebalance()) == (None, None)
        noticed = datetime.fromtimestamp(clock(), UTC)
        imds.notice("i-0aaa")
        imds.rebalance("i-0aaa")
        clock.advance(30)
        expected = InstanceAction("terminate", datetime.fromtimestamp(noticed.timestamp() + 120, UTC))
        assert await md.spot_notice() == expected == await md.spot_notice()
        assert await md.rebalance() == noticed


async def test_throttling_is_retried_and_gives_up_after_attempts(imds: FakeImds, clock: FakeClock) -> None:
    """429s are retried with backoff up to `attempts` tries; then a MetadataError saying so."""
    endpoint = await imds.add(SPOT)
    async with Imds(MetadataConfig(endpoint=endpoint, attempts=3, retry_initial=0.01, retry_max=0.02),
                    clock=clock) as md:
        await md.get("instance-id")
        imds.throttle("i-0aaa", 2)
        assert await md.get("instance-type") == "p4d.24xlarge"
        imds.throttle("i-0aaa", 3)
        with pytest.raises(MetadataError, match="after 3 tries"):
            await md.get("instance-type")
    assert [s for _, _, s in seen(imds)[2:]] == [429, 429, 200, 429, 429, 429]


async def test_unreachable_and_stalled_endpoints_fail_within_the_timeouts(imds: FakeImds) -> None:
    """Connection refused, or no answer within `timeout`: MetadataError after the tries, not a hang."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    async with Imds(MetadataConfig(endpoint=closed, attempts=2, retry_initial=0.01, retry_max=0.01)) as md:
        with pytest.raises(MetadataError, match="after 2 tries"):
            await md.identity()
    endpoint = await imds.add(SPOT)
    imds.stall("i-0aaa", 10.0)
    started = time.monotonic()
    async with Imds(MetadataConfig(endpoint=endpoint, timeout=0.1, attempts=2, retry_initial=0.01,
                                   retry_max=0.01)) as md:
        with pytest.raises(MetadataError, match="TimeoutError"):
            await md.get("instance-id")
    assert time.monotonic() - started < 5.0  # two tries of 0.1 s, nowhere near the 10 s stall


async def test_local_flavour_has_the_same_interface_and_no_notices() -> None:
    """Off EC2 the hostname is the instance, on-demand, never interrupted; `aws` picks IMDSv2."""
    async with open_metadata("local") as md:
        assert isinstance(md, LocalMetadata)
        got = await md.identity()
        assert (got.instance_id, got.lifecycle) == (socket.gethostname(), "on-demand")
        assert (await md.spot_notice(), await md.rebalance()) == (None, None)
    assert isinstance(open_metadata("aws"), Imds)


# --- the spot watcher -------------------------------------------------------------------------------------------


class Received:
    def __init__(self) -> None:
        self.notices: list[SpotNotice] = []
        self._arrived = asyncio.Condition()
        self.fail = 0  # raise on the next this-many calls

    async def __call__(self, notice: SpotNotice) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("callback broke")
        async with self._arrived:
            self.notices.append(notice)
            self._arrived.notify_all()

    async def wait(self, count: int, timeout: float) -> list[SpotNotice]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.notices) >= count)
        return list(self.notices)


def polls(requests: list[Request]) -> int:
    return sum(r.path.endswith("/rebalance") for r in requests)


async def test_watcher_calls_back_once_per_notice_within_the_poll_interval(imds: FakeImds, clock: FakeClock) -> None:
    """Interruption with its deadline, then rebalance separately, each once however many polls see it; a new
    notice time is a new notice; cancelling the task stops the watcher."""
    endpoint = await imds.add(SPOT)
    got = Received()
    interval = 0.1
    async with Imds(MetadataConfig(endpoint=endpoint), clock=clock) as md, asyncio.TaskGroup() as tg:
        task = tg.create_task(SpotWatcher(md, got, SpotWatchConfig(poll_interval=interval)).run())
        await imds.wait(lambda rs: polls(rs) >= 2)
        deadline = imds.notice("i-0aaa")
        assert await got.wait(1, timeout=interval + 2.0) == [
            Interruption(action="terminate", deadline=datetime.fromisoformat(deadline))]
        imds.rebalance("i-0aaa")
        await got.wait(2, timeout=interval + 2.0)
        now = len(imds.requests)
        await imds.wait(lambda rs: polls(rs[now:]) >= 3)
        assert len(got.notices) == 2 and isinstance(got.notices[1], Rebalance)
        clock.advance(60)
        imds.notice("i-0aaa", action="stop")
        assert (await got.wait(3, timeout=interval + 2.0))[2].action == "stop"
        task.cancel()
    assert task.cancelled()


async def test_watcher_survives_imds_errors_and_a_failing_callback(imds: FakeImds, clock: FakeClock) -> None:
    """Throttled reads are logged and polled again; a callback that raises gets the notice again next poll."""
    endpoint = await imds.add(SPOT)
    got = Received()
    cfg = MetadataConfig(endpoint=endpoint, attempts=1)
    with capture_logs() as logs:
        async with Imds(cfg, clock=clock) as md, asyncio.TaskGroup() as tg:
            imds.throttle("i-0aaa", 6)
            imds.notice("i-0aaa")
            got.fail = 1
            task = tg.create_task(SpotWatcher(md, got, SpotWatchConfig(poll_interval=0.05,
                                                                       error_backoff_max=0.1)).run())
            assert len(await got.wait(1, timeout=5.0)) == 1
            task.cancel()
    events = [e["event"] for e in logs]
    assert events.count("spot_watch_failed") == 6 and events.count("spot_callback_failed") == 1
    assert events.count("spot_interruption_notice") == 2  # offered twice, delivered once


def test_config_refuses_a_poll_interval_over_two_seconds_and_a_bad_token_ttl() -> None:
    """A slower poll would eat into the two minutes a job has to checkpoint; IMDS allows TTLs of 1..21600 s."""
    with pytest.raises(msgspec.ValidationError, match="poll_interval"):
        msgspec.convert({"poll_interval": 5}, SpotWatchConfig)
    with pytest.raises(msgspec.ValidationError, match="token_ttl"):
        msgspec.convert({"token_ttl": 21601}, MetadataConfig)
