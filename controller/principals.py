"""The users the controller knows, read from the identities registry the NATS server's configuration is rendered
from (`incl.auth.identities`), so that the server's rights and the controller's policy never disagree.

`incl admin user add|remove` rewrites the registry: it is read again whenever the file changed (a stat per lookup,
no restart). Without a registry (`path` None: a NATS server without authentication) every caller is trusted.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import structlog

from incl.auth import identities
from incl.controller.policy import Principal
from incl.proto.errors import NotAllowed

log = structlog.get_logger()


class Principals:
    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, Principal] = {}

    @property
    def enforced(self) -> bool:
        return self._path is not None

    def _refresh(self) -> None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            stamp = (0, 0)
        else:
            stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            registry = identities.load_file(self._path)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("identities_unreadable", path=str(self._path), error=str(exc))  # keep what was read
            return
        self._stamp = stamp
        self._users = {i.name: Principal(name=i.name, teams=frozenset(i.teams) | frozenset(i.team_admin),
                                         team_admin=frozenset(i.team_admin), admin=i.admin)
                       for i in registry.of_kind(identities.USER)}
        log.info("identities_read", path=str(self._path), users=len(self._users))

    def get(self, name: str) -> Principal:
        """The user `name` as the registry has them; NotAllowed if it does not (revoked since they connected)."""
        if self._path is None:
            return Principal.trusted(name)
        self._refresh()
        found = self._users.get(name)
        if found is None:
            raise NotAllowed(f"not allowed: no user {name} among the controller's identities")
        return found
