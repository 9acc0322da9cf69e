"""What a connection can tell about NATS itself: the servers it knows, and INCL's streams as JetStream reports them
(replicas, bytes, leader). For `incl status` and the controller's store metrics."""

from __future__ import annotations

import asyncio

from nats.js.api import StreamInfo
from nats.js.errors import NotFoundError

from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.status import NatsServer, Replica, StreamStatus

# A KV bucket is a stream named KV_<bucket> (a JetStream convention).
STREAMS = (subjects.ASSIGN_STREAM, subjects.EVENTS_STREAM, subjects.LOGS_STREAM, subjects.METRICS_STREAM,
           subjects.DEAD_STREAM, subjects.STUDIES_STREAM, subjects.AUDIT_STREAM,
           *(f"KV_{b}" for b in (subjects.JOBS_BUCKET, subjects.AGENTS_BUCKET, subjects.SUBMITS_BUCKET,
                                 subjects.STUDIES_BUCKET)))


def servers(bus: Bus) -> list[NatsServer]:
    """The server this connection is on (name, version, cluster from its INFO), then every other one in its pool:
    those it was given and those the cluster told it of."""
    nc = bus._nc  # within incl.bus: the connection's own view of the cluster
    info = nc._server_info  # nats-py keeps the connected server's INFO only here
    current = nc.connected_url
    out = []
    if current is not None:
        out.append(NatsServer(url=current.geturl(), connected=True, name=info.get("server_name"),
                              version=info.get("version"), cluster=info.get("cluster")))
    seen = {current.netloc} if current is not None else set()
    for uri in nc.servers:
        if uri.netloc not in seen:
            seen.add(uri.netloc)
            out.append(NatsServer(url=uri.geturl()))
    return out


async def streams(bus: Bus) -> list[StreamStatus]:
    """INCL's streams and buckets that exist, in a fixed order, asked for all at once."""
    infos = await asyncio.gather(*(_info(bus, name) for name in STREAMS))
    return [_status(info) for info in infos if info is not None]


async def _info(bus: Bus, name: str) -> StreamInfo | None:
    try:
        return await bus.jetstream.stream_info(name)
    except NotFoundError:
        return None


def _status(info: StreamInfo) -> StreamStatus:
    cluster = info.cluster
    followers = [Replica(name=p.name or "?", current=bool(p.current), lag=p.lag or 0)
                 for p in cluster.replicas or []] if cluster is not None else []
    return StreamStatus(name=info.config.name or "?", replicas=info.config.num_replicas or 1,
                        messages=info.state.messages, bytes=info.state.bytes,
                        leader=cluster.leader if cluster is not None else None, followers=followers)
