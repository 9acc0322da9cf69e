"""Several NATS URLs in every config and on the command line, never a password in what is shown, and the
controller's `replicas` reaching every stream and bucket of a real 3-node cluster."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from conftest import NatsServer, wait_for
from natscluster import NatsCluster

from incl.agent.config import AgentConfig
from incl.bus.connection import connect, masked, server_list
from incl.bus.streams import ReplicasUnavailable, StreamLimits, ensure_buckets, ensure_streams, stream_configs
from incl.controller.config import ControllerConfig

LIMITS = StreamLimits(logs_max_bytes=64 * 2**20, metrics_max_bytes=16 * 2**20, dead_max_bytes=4 * 2**20,
                      studies_max_bytes=16 * 2**20)


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path) as cluster:
        yield cluster


def test_urls_are_a_list_or_comma_separated_as_nats_clients_take_them() -> None:
    assert server_list("nats://a:4222") == ["nats://a:4222"]
    assert server_list(" nats://a:4222, nats://b:4222 ,,nats://c:4222 ") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert server_list(["nats://a:4222", "nats://b:4222"]) == ["nats://a:4222", "nats://b:4222"]
    with pytest.raises(ValueError, match="no NATS URL"):
        server_list(" , ")


def test_credentials_in_urls_are_masked_and_nothing_else_changes() -> None:
    assert masked("nats://alice:s3cret@n1:4222,tls://tok3n@n2:4222/x,nats://n3:4222") == (
        "nats://***@n1:4222,tls://***@n2:4222/x,nats://n3:4222")
    assert masked(["bob:pw@10.0.0.1:4222"]) == "***@10.0.0.1:4222"
    assert masked("nats://u:p@ss@n1:4222") == "nats://***@n1:4222"  # an @ inside the password
    assert "s3cret" not in masked("nats://alice:s3cret@n1:4222")


def test_daemon_configs_take_several_urls_and_a_bounded_replica_count() -> None:
    urls = ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
    cfg = msgspec.convert({"nats_url": urls, "replicas": 3}, ControllerConfig)
    assert server_list(cfg.nats_url) == urls and cfg.replicas == 3
    assert server_list(msgspec.convert({"nats_url": ",".join(urls)}, AgentConfig).nats_url) == urls
    assert ControllerConfig().replicas == 1
    for bad in (0, 6):
        with pytest.raises(msgspec.ValidationError, match="replicas"):
            msgspec.convert({"replicas": bad}, ControllerConfig)
    assert {c.num_replicas for c in stream_configs(LIMITS, 3)} == {3}


async def test_a_connection_given_several_urls_reaches_a_live_one(nats_server: NatsServer) -> None:
    dead = "nats://127.0.0.1:1"
    async with await connect(f"{dead},{nats_server.url}", "test", connect_timeout=1, reconnect_wait=0.05,
                             request_timeout=2, max_reconnect_attempts=0, quiet=True) as bus:
        assert "memory" in json.loads(await bus.request_raw("$JS.API.INFO", b"", timeout=2))  # JetStream answers


async def test_streams_and_buckets_get_the_configured_replicas_and_r1_ones_are_raised(
        three_nodes: NatsCluster) -> None:
    await three_nodes.wait_ready()
    async with await connect(three_nodes.urls, "test", connect_timeout=2, reconnect_wait=0.1,
                             request_timeout=10) as bus:
        await ensure_streams(bus, LIMITS, replicas=1)  # a store from before the cluster
        await ensure_buckets(bus, replicas=1)
        await ensure_streams(bus, LIMITS, replicas=3)
        buckets = await ensure_buckets(bus, replicas=3)
        js = bus.jetstream
        names = [c.name or "" for c in stream_configs(LIMITS)] + [f"KV_{name}" for name in buckets]
        replicas = {name: (await js.stream_info(name)).config.num_replicas for name in names}
        assert replicas == dict.fromkeys(names, 3)

        async def placed() -> bool:  # the leader and two current followers, on three servers
            infos = [await js.stream_info(name) for name in names]
            return all(i.cluster and len([r for r in i.cluster.replicas or [] if r.current]) == 2 for i in infos)

        await wait_for(placed, 20, "every stream on three servers")


async def test_more_replicas_than_servers_is_a_clear_error(nats_server: NatsServer, three_nodes: NatsCluster) -> None:
    async with await connect(nats_server.url, "test", connect_timeout=2, reconnect_wait=0.1, request_timeout=5) as bus:
        with pytest.raises(ReplicasUnavailable, match="NATS is a single server"):
            await ensure_streams(bus, LIMITS, replicas=3)
    await three_nodes.wait_ready()
    async with await connect(three_nodes.urls, "test", connect_timeout=2, reconnect_wait=0.1,
                             request_timeout=10) as bus:
        with pytest.raises(ReplicasUnavailable, match="fewer than 5 JetStream servers"):
            await ensure_streams(bus, LIMITS, replicas=5)
        with pytest.raises(ReplicasUnavailable, match="fewer than 5 JetStream servers"):
            await ensure_buckets(bus, replicas=5)
