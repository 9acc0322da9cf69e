"""A nats-server configured exactly as INCL renders it (identities, nkeys, permissions), for the auth tests.

Identities made once per test (key generation is cheap): the controller, users `alice` (admin, team vision) and `bob`
(team nlp), agents `a1` and `a2`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conftest import NATS_SERVER, Daemon, free_port, wait_listening

from incl.auth import identities
from incl.cli import stack

USERS = {"alice": (["vision"], True), "bob": (["nlp"], False)}
AGENTS = ("a1", "a2")


class AuthNats(Daemon):
    """nats-server started with `-c` the configuration INCL renders from the identities under `home`."""

    def __init__(self, home: Path, tmp: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.conf = stack.server_conf(home)
        self.render()
        super().__init__("nats", [str(NATS_SERVER), "-c", str(self.conf)], tmp / "nats.log")

    def render(self) -> None:
        stack.render_conf(self.home, self.port)  # as `incl up` renders it (a reload cannot move the store)

    def start(self) -> AuthNats:
        super().start()
        wait_listening(self, self.port)
        return self

    def reload(self) -> None:
        """Render the identities again and have the running server read them (what `incl admin` does)."""
        self.render()
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def creds(self, kind: str, name: str) -> Path:
        return identities.creds_file(self.home, kind, name)


def make_identities(home: Path) -> None:
    identities.add(home, "controller", "controller")
    for user, (teams, admin) in USERS.items():
        identities.add(home, "user", user, teams=teams, admin=admin)
    for agent in AGENTS:
        identities.add(home, "agent", agent)


def make_people(home: Path, people: dict[str, tuple[list[str], list[str], bool]], agents: tuple[str, ...] = ("a1",)
                ) -> None:
    """The controller, `agents`, and users as `people` says: name -> (teams, teams they administer, cluster admin)."""
    identities.add(home, "controller", "controller")
    for agent in agents:
        identities.add(home, "agent", agent)
    for name, (teams, team_admin, admin) in people.items():
        identities.add(home, "user", name, teams=teams, team_admin=team_admin, admin=admin)


@contextmanager
def people_nats(tmp: Path, people: dict[str, tuple[list[str], list[str], bool]]) -> Iterator[AuthNats]:
    """A server whose identities are the controller, agent a1 and `people` (see `make_people`)."""
    home = tmp / "home"
    make_people(home, people)
    server = AuthNats(home, tmp).start()
    try:
        yield server
    finally:
        server.kill()


def start_with_creds(cluster: Any, server: AuthNats) -> None:
    """The cluster's controller and agent a1, each with its own credentials from `server`'s home."""
    cluster.start_controller(creds=str(server.creds("controller", "controller")))
    cluster.start_agent("a1", creds=str(server.creds("agent", "a1")))
