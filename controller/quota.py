"""GPU quotas and the order of the queue, as pure logic (the admin file is read by `load_quota_config`).

A quota caps the GPUs a user, or a team, holds at once. The scheduler never places a job past one: `check`
names the quota in the job's waiting reason ("team vision: 16/16 GPUs in use"), and a job that asks for more
than a quota allows is refused at submit (`refuse_at_submit`). Priority classes order the queue; within a
class `fair_order` serves the user holding the fewest GPUs first, so many jobs from one user cannot starve
the others.

The admin file (YAML); every key is optional:

    default_user_gpus: 8            # users not listed under `users`; absent: no limit
    users:
      alice: {max_gpus: 16, team: vision}   # team: the team her jobs count against when they name none
    teams:
      vision: {max_gpus: 16, members: [alice, bob]}   # members: only they may name the team
    priority_classes: {high: {rank: 10}, normal: {rank: 0}, low: {rank: -10}}
    default_priority: normal
"""

from __future__ import annotations

import difflib
import heapq
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import yaml

from incl.proto.errors import SpecInvalid
from incl.proto.messages import Job, QuotaLine


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class UserQuota(_Config, frozen=True):
    max_gpus: int | None = None  # None: the file's default_user_gpus
    team: str | None = None


class TeamQuota(_Config, frozen=True):
    max_gpus: int | None = None  # None: no limit
    members: list[str] | None = None  # None: anyone may name the team


class PriorityClass(_Config, frozen=True):
    rank: int  # higher runs first


def _default_classes() -> dict[str, PriorityClass]:
    return {"high": PriorityClass(rank=10), "normal": PriorityClass(rank=0), "low": PriorityClass(rank=-10)}


class QuotaConfig(_Config, frozen=True):
    default_user_gpus: int | None = None
    users: dict[str, UserQuota] = {}
    teams: dict[str, TeamQuota] = {}
    priority_classes: dict[str, PriorityClass] = msgspec.field(default_factory=_default_classes)
    default_priority: str = "normal"

    def user_limit(self, user: str) -> int | None:
        quota = self.users.get(user)
        return quota.max_gpus if quota is not None and quota.max_gpus is not None else self.default_user_gpus

    def team_limit(self, team: str | None) -> int | None:
        quota = self.teams.get(team) if team is not None else None
        return quota.max_gpus if quota is not None else None


class QuotaConfigError(ValueError):
    """The admin file is wrong; the message names the file and the key."""


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """What a job holds against quotas, and where it stands in the queue."""

    user: str
    team: str | None
    gpus: int  # in all nodes
    rank: int = 0


class Queued(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    claim: Claim
    submitted_at: float


class Usage(msgspec.Struct, kw_only=True):
    """GPUs held now, per user and per team. The scheduler `add`s each placement made during a pass."""

    users: dict[str, int] = {}
    teams: dict[str, int] = {}

    def add(self, claim: Claim) -> None:
        self.users[claim.user] = self.users.get(claim.user, 0) + claim.gpus
        if claim.team is not None:
            self.teams[claim.team] = self.teams.get(claim.team, 0) + claim.gpus


# --- loading -----------------------------------------------------------------------------------------------


def load_quota_config(path: str | Path | None) -> QuotaConfig:
    """The admin file, or the defaults (no limits, classes high/normal/low) when there is none."""
    if path is None:
        return QuotaConfig()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise QuotaConfigError(f"{path}: {exc}") from None
    return parse_quota_config(data, source=str(path))


def parse_quota_config(data: Any, source: str = "quota config") -> QuotaConfig:
    if data is None:
        return QuotaConfig()
    if not isinstance(data, dict):
        raise QuotaConfigError(f"{source}: expected a mapping of settings, not {type(data).__name__}")
    values = dict(data)
    for key, struct in (("users", UserQuota), ("teams", TeamQuota), ("priority_classes", PriorityClass)):
        section = data.get(key)
        if section is None:
            values.pop(key, None)
            continue
        if not isinstance(section, dict):
            raise QuotaConfigError(f"{source}: {key}: expected a mapping of names to settings")
        values[key] = {str(name): _convert(v or {}, struct, f"{key}.{name}", source) for name, v in section.items()}
    config: QuotaConfig = _convert(values, QuotaConfig, "", source)
    for problem in _problems(config):
        raise QuotaConfigError(f"{source}: {problem}")
    return config


def _convert(data: Any, struct: type[Any], path: str, source: str) -> Any:
    try:
        return msgspec.convert(data, struct)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `")
        field = ".".join(p for p in (path, where.rstrip("`").removeprefix("$").lstrip(".")) if p)
        if reason.startswith("Object contains unknown field"):
            key = reason.split("`")[1]
            known = [f.name for f in msgspec.structs.fields(struct)]
            field, reason = ".".join(p for p in (field, key) if p), f"unknown key{_hint(key, known)}"
        raise QuotaConfigError(f"{source}: {field + ': ' if field else ''}{reason}") from None


def _problems(c: QuotaConfig) -> Iterable[str]:
    if c.default_user_gpus is not None and c.default_user_gpus < 0:
        yield "default_user_gpus: cannot be negative"
    for name, team in c.teams.items():
        if team.max_gpus is not None and team.max_gpus < 0:
            yield f"teams.{name}.max_gpus: cannot be negative"
    for name, user in c.users.items():
        if user.max_gpus is not None and user.max_gpus < 0:
            yield f"users.{name}.max_gpus: cannot be negative"
        if user.team is not None and user.team not in c.teams:
            yield f"users.{name}.team: unknown team {user.team!r}{_hint(user.team, c.teams)}"
        elif user.team is not None and not _may_use(c.teams[user.team], name):
            yield f"users.{name}.team: {name} is not among the members of team {user.team}"
    if not c.priority_classes:
        yield "priority_classes: name at least one class"
    elif c.default_priority not in c.priority_classes:
        yield f"default_priority: unknown class {c.default_priority!r}{_hint(c.default_priority, c.priority_classes)}"


def _hint(word: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known) or 'none'}"


def _may_use(team: TeamQuota, user: str) -> bool:
    return team.members is None or user in team.members


# --- claims ------------------------------------------------------------------------------------------------


def resolve(
    config: QuotaConfig, *, user: str, gpus: int, team: str | None = None, priority: int | str | None = None
) -> Claim:
    """The claim of a job being submitted. Raises SpecInvalid (field `team` or `priority`) when the job
    names a team it may not use or a priority class that does not exist."""
    return Claim(user=user, team=_team(config, user, team), gpus=gpus, rank=_rank(config, priority))


def claim_of(config: QuotaConfig, job: Job) -> Claim:
    """The claim of a job already accepted; lenient, since the admin file may have changed since."""
    gpus = job.spec.resources.gpus * job.spec.resources.nodes
    try:
        return resolve(config, user=job.user, gpus=gpus, team=job.spec.team, priority=job.spec.priority)
    except SpecInvalid:
        default_rank = config.priority_classes[config.default_priority].rank
        return Claim(user=job.user, team=job.spec.team, gpus=gpus, rank=default_rank)


def _team(config: QuotaConfig, user: str, team: str | None) -> str | None:
    if team is not None:
        if config.teams and team not in config.teams:
            raise SpecInvalid(f"unknown team {team!r}{_hint(team, config.teams)}", field="team")
        if team in config.teams and not _may_use(config.teams[team], user):
            raise SpecInvalid(f"user {user} is not a member of team {team}", field="team")
        return team
    own = config.users.get(user)
    if own is not None and own.team is not None:
        return own.team
    teams = sorted(name for name, t in config.teams.items() if t.members is not None and user in t.members)
    if len(teams) > 1:
        raise SpecInvalid(f"user {user} is in teams {', '.join(teams)}; name one with `team:`", field="team")
    return teams[0] if teams else None


def _rank(config: QuotaConfig, priority: int | str | None) -> int:
    classes = config.priority_classes
    if priority is None:
        return classes[config.default_priority].rank
    if isinstance(priority, str):
        if priority not in classes:
            raise SpecInvalid(f"unknown priority class {priority!r}{_hint(priority, classes)}", field="priority")
        return classes[priority].rank
    return priority  # a plain rank: higher runs first


# --- checks ------------------------------------------------------------------------------------------------


def usage(claims: Iterable[Claim]) -> Usage:
    """What the running (placed, not yet finished) jobs hold."""
    total = Usage(users={}, teams={})
    for claim in claims:
        total.add(claim)
    return total


def check(config: QuotaConfig, claim: Claim, held: Usage) -> str | None:
    """None when the job may be placed now, else why not: "team vision: 16/16 GPUs in use"."""
    if claim.gpus <= 0:
        return None
    limit = config.user_limit(claim.user)
    used = held.users.get(claim.user, 0)
    if limit is not None and used + claim.gpus > limit:
        return f"user {claim.user}: {used}/{limit} GPUs in use"
    limit = config.team_limit(claim.team)
    used = held.teams.get(claim.team, 0) if claim.team is not None else 0
    if limit is not None and used + claim.gpus > limit:
        return f"team {claim.team}: {used}/{limit} GPUs in use"
    return None


def refuse_at_submit(config: QuotaConfig, claim: Claim) -> str | None:
    """Why the job could never run under its quotas (it asks for more GPUs than one allows), or None."""
    limit = config.user_limit(claim.user)
    if limit is not None and claim.gpus > limit:
        return f"the job asks for {claim.gpus} GPUs; user {claim.user} may hold at most {limit}"
    limit = config.team_limit(claim.team)
    if limit is not None and claim.gpus > limit:
        return f"the job asks for {claim.gpus} GPUs; team {claim.team} may hold at most {limit}"
    return None


def report(config: QuotaConfig, held: Usage) -> list[QuotaLine]:
    """Usage and limits for `incl quota`: every configured user and team, and whoever holds GPUs."""
    lines = [
        QuotaLine(kind="user", name=u, used=held.users.get(u, 0), limit=config.user_limit(u))
        for u in sorted(set(config.users) | set(held.users))
    ]
    lines += [
        QuotaLine(kind="team", name=t, used=held.teams.get(t, 0), limit=config.team_limit(t))
        for t in sorted(set(config.teams) | set(held.teams))
    ]
    return lines


# --- order -------------------------------------------------------------------------------------------------


def fair_order(queued: Iterable[Queued], held: Usage) -> list[Queued]:
    """The order in which the scheduler tries queued jobs.

    Higher priority classes first. Within a class, repeatedly take the oldest job of the user who holds
    the fewest GPUs counting the jobs already ordered ahead (then the fewest jobs ordered ahead, then the
    oldest waiting job): users take turns however many jobs each has queued.
    """
    by_rank: dict[int, dict[str, list[Queued]]] = {}
    for q in sorted(queued, key=lambda q: (q.submitted_at, q.job_id)):
        by_rank.setdefault(q.claim.rank, {}).setdefault(q.claim.user, []).append(q)
    gpus = dict(held.users)
    jobs: dict[str, int] = {}
    out: list[Queued] = []
    for rank in sorted(by_rank, reverse=True):
        lanes = {user: iter(items) for user, items in by_rank[rank].items()}
        heads = {user: next(lane) for user, lane in lanes.items()}
        heap = [_key(heads[u], gpus, jobs) for u in heads]
        heapq.heapify(heap)
        while heap:
            *_, user = heapq.heappop(heap)
            job = heads.pop(user)
            out.append(job)
            gpus[user] = gpus.get(user, 0) + job.claim.gpus
            jobs[user] = jobs.get(user, 0) + 1
            following = next(lanes[user], None)
            if following is not None:
                heads[user] = following
                heapq.heappush(heap, _key(following, gpus, jobs))
    return out


def _key(head: Queued, gpus: dict[str, int], jobs: dict[str, int]) -> tuple[int, int, float, str, str]:
    user = head.claim.user
    return (gpus.get(user, 0), jobs.get(user, 0), head.submitted_at, head.job_id, user)
