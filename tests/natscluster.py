"""A real 3-node NATS cluster with JetStream for tests: the wheel's nats-server on loopback ports, one config file
per node (its own server_name, client, cluster and monitoring ports, store), each node a `Daemon` that a test can
kill -9 and start again with the same store."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from conftest import NATS_SERVER, Daemon, free_port, wait_for, wait_listening

from incl.bus.connection import connect

CLUSTER_NAME = "incl-test"


class Node(Daemon):
    """One server of the cluster: a client port, a route port and a monitoring port, a store of its own."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.server_name = name
        self.port, self.route_port, self.http_port = free_port(), free_port(), free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.conf = tmp / f"{name}.conf"
        self.store = tmp / f"{name}-store"
        super().__init__(name, [str(NATS_SERVER), "-c", str(self.conf)], tmp / f"{name}.log")

    def write_conf(self, peers: list[Node]) -> None:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p.route_port}"' for p in peers if p is not self)
        self.conf.write_text(
            f'server_name: "{self.server_name}"\n'
            f"listen: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.http_port}\n"
            f'jetstream {{ store_dir: "{self.store}" }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: 127.0.0.1:{self.route_port}, routes: [{routes}] }}\n'
        )

    def start(self) -> Node:
        super().start()
        wait_listening(self, self.port)
        return self

    def connection_names(self) -> list[str]:
        """The names of the clients connected to this node now (its monitoring endpoint /connz)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/connz?limit=1000", timeout=2) as reply:
            return [c.get("name", "") for c in json.load(reply).get("connections", [])]


class NatsCluster:
    """Three nodes routed to each other. `with NatsCluster(tmp) as nodes: await nodes.wait_ready()`. It stands in
    for conftest's `NatsServer` in a `Cluster`: `url` names every node, `output` is each node's log."""

    name = "nats-cluster"

    def __init__(self, tmp: Path, size: int = 3) -> None:
        self.nodes = [Node(tmp, f"n{i + 1}") for i in range(size)]
        for node in self.nodes:
            node.write_conf(self.nodes)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        return ",".join(self.urls)

    def output(self) -> str:
        return "\n".join(f"--- {node.name}\n{node.output()[-3000:]}" for node in self.nodes)

    def __enter__(self) -> NatsCluster:
        for node in self.nodes:
            node.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.kill()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until JetStream answers through every running node: the cluster has a meta leader."""
        async def ready() -> bool:
            for node in self.nodes:
                if not node.running:
                    continue
                async with await connect(node.url, "probe", connect_timeout=1, reconnect_wait=0.1,
                                         request_timeout=1, max_reconnect_attempts=0, quiet=True) as bus:
                    info = json.loads(await bus.request_raw("$JS.API.INFO", b"", timeout=1))
                    if "error" in info:  # 503 "JetStream system temporarily unavailable": no meta leader yet
                        return False
            return True

        await wait_for(ready, timeout, "the NATS cluster to elect a JetStream meta leader", interval=0.1)

    def holding(self, name_prefix: str) -> Node | None:
        """The running node a client whose connection name starts with `name_prefix` is connected to."""
        for node in self.nodes:
            if node.running and any(n.startswith(name_prefix) for n in node.connection_names()):
                return node
        return None
