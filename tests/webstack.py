"""A real stack for the web UI's tests: nats-server, controller and an agent as processes (conftest's), and the
web server as its own process (`python -m incl.web`), started once per test module."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from conftest import Cluster, Daemon, NatsServer, free_port, wait_listening

# Small bounds so that a slow client is dropped within the tests' time.
WEB_CFG = {"jobs_cache_ttl": 0.2, "state_poll": 0.2, "stream_poll": 0.1, "stream_queue_bytes": 256 * 1024,
           "slow_client_after": 1.0, "stream_retry_ms": 200, "request_timeout": 5.0, "log_level": "info"}


class WebStack:
    def __init__(self, cluster: Cluster, web: Daemon, port: int) -> None:
        self.cluster, self.web, self.port = cluster, web, port
        self.url = f"http://127.0.0.1:{port}"

    def dump(self) -> str:
        return f"{self.cluster.dump()}\n===== web\n{self.web.output()[-6000:]}"


@contextmanager
def web_stack(tmp: Path, agents: int = 1, **web_cfg: Any) -> Iterator[WebStack]:
    """The stack, with $INCL_HOME in `tmp` (no credentials of the user's own stack leak in)."""
    saved = os.environ.get("INCL_HOME")
    os.environ["INCL_HOME"] = str(tmp / "home")
    nats = NatsServer(tmp).start()
    cluster = Cluster(tmp, nats)
    web: Daemon | None = None
    try:
        cluster.start_controller()
        for i in range(agents):
            cluster.start_agent(f"a{i + 1}", cpus=8)
        port = free_port()
        cfg = tmp / "web.yaml"
        cfg.write_text(yaml.safe_dump({**WEB_CFG, **web_cfg, "nats_url": nats.url, "port": port}))
        web = Daemon("web", [sys.executable, "-m", "incl.web", "--config", str(cfg)], tmp / "web.log",
                     cluster.env).start()
        wait_listening(web, port, timeout=30.0)  # a loaded machine imports slowly
        yield WebStack(cluster, web, port)
    finally:
        if web is not None:
            web.stop()
        cluster.close()
        nats.kill()
        if saved is None:
            os.environ.pop("INCL_HOME", None)
        else:
            os.environ["INCL_HOME"] = saved
