"""`incl status` on the wire: the controller's view of the whole system, and the NATS servers a client reached.

The controller answers `StatusRequest` with what only it can see (its streams as JetStream reports them, its
agents and jobs by state, the newest dead letters); the CLI adds the servers its own connection knows.
"""

from __future__ import annotations

import msgspec

from incl.proto.messages import DeadLetterView, Reply, Request


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class NatsServer(_Struct, frozen=True):
    """A server of the NATS cluster as a client's connection knows it: the one it is connected to has a name
    and version; the others (given, or learned from the cluster) only a URL."""
    url: str
    connected: bool = False
    name: str | None = None
    version: str | None = None
    cluster: str | None = None  # the NATS cluster's name; None for a single server


class Replica(_Struct, frozen=True):
    name: str  # the NATS server holding it
    current: bool = True  # caught up with the leader
    lag: int = 0  # operations behind


class StreamStatus(_Struct, frozen=True):
    name: str
    replicas: int  # configured
    messages: int
    bytes: int
    leader: str | None = None  # the server leading it (a cluster), or the single server's name
    followers: list[Replica] = []  # on a cluster: the other replicas and whether they are caught up


class ControllerMember(_Struct, frozen=True):
    """A running controller, from the controllers' lease bucket: the leader or a standby."""
    controller_id: str
    started_at: float
    leader: bool = False


class StatusRequest(Request, frozen=True):
    errors: int = 5  # how many of the newest dead letters to include


class StatusReply(Reply, frozen=True):
    controller_id: str
    started_at: float  # when this controller started
    jobs: dict[str, int]  # by state
    agents: dict[str, int]  # by state
    streams: list[StreamStatus]
    dead_letters: int  # messages parked in the dead-letter stream
    errors: list[DeadLetterView]  # the newest, data cut to a preview
    controllers: list[ControllerMember] = msgspec.field(default_factory=list)  # leader (this one) and standbys
