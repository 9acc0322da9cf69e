"""Who may see and change which job: a pure function of the caller and the job's owner and team.

- A user sees and cancels their own jobs (and studies).
- Members of a team see the team's jobs, their logs, metrics and outputs; the team's admins may also cancel them.
- Cluster admins may do anything.

The NATS server enforces the same rule on the log and metric subjects (`incl.auth.permissions`), so a reader who
skips the controller gets nothing more. A refusal is one line naming the owner and the team, never a timeout.
A controller with no identities (a NATS server without authentication, where anyone may be anyone) has no
principals to check: `Principal.TRUSTED` stands for every caller.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from incl.proto.errors import NotAllowed, SpecInvalid
from incl.proto.spec import JobSpec


@dataclass(frozen=True)
class Principal:
    name: str
    teams: frozenset[str] = frozenset()
    team_admin: frozenset[str] = frozenset()  # teams whose jobs this user may cancel
    admin: bool = False  # a cluster admin

    @classmethod
    def trusted(cls, name: str) -> Principal:
        """A caller on a bus without authentication: nothing can be refused that the bus would not hand over."""
        return cls(name=name, admin=True)


def _owned(kind: str, ident: str, owner: str, team: str | None) -> str:
    return f"{kind} {ident} belongs to {owner}" + (f" (team {team})" if team else "")


def may_read(who: Principal, owner: str, team: str | None) -> bool:
    return who.admin or who.name == owner or (team is not None and team in who.teams)


def may_change(who: Principal, owner: str, team: str | None) -> bool:
    return who.admin or who.name == owner or (team is not None and team in who.team_admin)


def check_read(who: Principal, kind: str, ident: str, owner: str, team: str | None) -> None:
    if not may_read(who, owner, team):
        raise NotAllowed(f"not allowed: {_owned(kind, ident, owner, team)}")


def check_change(who: Principal, kind: str, ident: str, owner: str, team: str | None) -> None:
    if may_change(who, owner, team):
        return
    line = f"not allowed: {_owned(kind, ident, owner, team)}"
    if team is not None and team in who.teams:
        line += f"; only team {team}'s admins may change it"
    raise NotAllowed(line)


def check_admin(who: Principal, what: str) -> None:
    if not who.admin:
        raise NotAllowed(f"not allowed: {what} is for cluster admins, and {who.name} is not one")


def team_for(spec: JobSpec, who: Principal, quota_team: str | None, usable: Callable[[str], bool]) -> str | None:
    """The team a job being submitted belongs to: the one it names, else the team the quota configuration gives
    the user (`quota_team`), else their only team if the quotas allow it (`usable`). SpecInvalid (field `team`)
    when it names a team the user is not in."""
    if spec.team is not None:
        if not who.admin and spec.team not in who.teams:
            teams = ", ".join(sorted(who.teams)) or "none"
            raise SpecInvalid(f"{who.name} is not in team {spec.team} (their teams: {teams})", field="team")
        return spec.team
    if quota_team is not None:
        return quota_team
    only = next(iter(who.teams)) if len(who.teams) == 1 else None
    return only if only is not None and usable(only) else None
