"""The registry of identities allowed on the bus: `$INCL_HOME/auth/identities.json` (mode 0600).

Each identity has a kind (user, agent, controller), a name (a user name, an agent id), its public nkey, and for users
their teams and whether they are cluster admins. The seeds are not here: each is in its own credential file under
`$INCL_HOME/creds/<kind>-<name>.nk`, handed to whoever acts as that identity. The nats-server configuration is
rendered from this registry (`incl.auth.serverconf`), so removing an identity here and reloading the server revokes it.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from incl.auth import keys
from incl.proto import subjects

USER, AGENT, CONTROLLER = keys.KINDS


class Identity(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: str
    name: str
    public_key: str
    teams: list[str] = []
    team_admin: list[str] = []  # teams whose jobs this user may cancel (a team admin is in the team)
    admin: bool = False  # a cluster admin: may do anything
    created_at: float = 0.0
    rotated_at: float = 0.0  # when its key was last replaced (`incl admin user rotate`); 0: never


class Registry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    identities: list[Identity] = []

    def find(self, kind: str, name: str) -> Identity | None:
        return next((i for i in self.identities if (i.kind, i.name) == (kind, name)), None)

    def of_kind(self, kind: str) -> list[Identity]:
        return [i for i in self.identities if i.kind == kind]


def registry_file(home: Path) -> Path:
    return home / "auth" / "identities.json"


def creds_file(home: Path, kind: str, name: str) -> Path:
    return home / "creds" / f"{kind}-{name}.nk"


def load(home: Path) -> Registry:
    """The registry, empty if there is none yet."""
    return load_file(registry_file(home))


def load_file(path: Path) -> Registry:
    if not path.exists():
        return Registry()
    return msgspec.json.decode(path.read_bytes(), type=Registry)


def save(home: Path, registry: Registry) -> None:
    keys.private_dir(registry_file(home).parent)
    keys.write_private(registry_file(home), msgspec.json.format(msgspec.json.encode(registry).decode()) + "\n")


def add(home: Path, kind: str, name: str, *, teams: list[str] | None = None, team_admin: list[str] | None = None,
        admin: bool = False) -> Path:
    """A new identity with a fresh key: its credential file written, the registry saved. Returns the file.
    ValueError if it exists already or its name cannot be a subject token."""
    if kind not in keys.KINDS:
        raise ValueError(f"unknown kind of identity {kind!r}")
    subjects.name_token(name)
    registry = load(home)
    if registry.find(kind, name) is not None:
        raise ValueError(f"{kind} {name} exists already")
    seed = keys.new_seed()
    path = keys.write_creds(creds_file(home, kind, name), kind, name, seed)
    for team in [*(teams or []), *(team_admin or [])]:
        subjects.name_token(team)
    identity = Identity(kind=kind, name=name, public_key=keys.public_key(seed),
                        teams=sorted(set(teams or []) | set(team_admin or [])),
                        team_admin=sorted(set(team_admin or [])), admin=admin, created_at=time.time())
    save(home, Registry(identities=[*registry.identities, identity]))
    return path


def ensure(home: Path, kind: str, name: str, *, admin: bool = False) -> Path:
    """The credential file of `kind` `name`, created (with its identity) if missing: what `incl up` needs to
    exist, made once and kept."""
    path = creds_file(home, kind, name)
    if load(home).find(kind, name) is not None and path.exists():
        return path
    remove(home, kind, name)  # a half-made identity (a file without its entry, or the reverse) is made again
    return add(home, kind, name, admin=admin)


def rotate(home: Path, kind: str, name: str) -> Path:
    """A fresh key for an existing identity, its rights unchanged: the credential file is replaced (atomically) and the
    registry names the new public key, so once the server reloads, the old key is refused and its connections
    closed. Returns the file. ValueError if there is no such identity."""
    registry = load(home)
    old = registry.find(kind, name)
    if old is None:
        raise ValueError(f"no {kind} {name}")
    seed = keys.new_seed()
    path = keys.write_creds(creds_file(home, kind, name), kind, name, seed)
    new = msgspec.structs.replace(old, public_key=keys.public_key(seed), rotated_at=time.time())
    save(home, Registry(identities=[new if i is old else i for i in registry.identities]))
    return path


def remove(home: Path, kind: str, name: str) -> bool:
    """Drop the identity and delete its credential file; False if it was not there."""
    registry = load(home)
    kept = [i for i in registry.identities if (i.kind, i.name) != (kind, name)]
    creds_file(home, kind, name).unlink(missing_ok=True)
    if len(kept) == len(registry.identities):
        return False
    save(home, Registry(identities=kept))
    return True
