"""Provisioning as a pure diff (Nomad's `diffAllocs`): which instances to launch and which to terminate, and why.

`plan(desired, observed, agents, config, now)` compares the queued jobs that need capacity with the instances
the provider reports for the cluster and the agents that registered from them. No I/O, no clock: `now` is an
argument. The applier carries the plan out (`AwsProvider.launch`, `.terminate`).

    launch       one per (job, attempt) that no existing instance serves; spot unless the job asks for
                 on-demand, or asks for `auto` and has been preempted `max_preemptions` times already.
                 An attempt whose instance died before it ran the job (a spot reclamation while booting, or
                 terminated here as never registered) is launched again: `generation` numbers the launches of
                 one attempt (the count of instances tagged with it, terminated ones included, and past the
                 highest `incl:generation` seen), so the provider's idempotency token protects a retried call
                 of one launch but never a deliberate relaunch.
    terminate    never_registered  no agent ever registered from it within `boot_timeout` of its launch
                 idle              its agent is alive, runs nothing, and has for `idle_timeout`
                 orphan            no live agent, past `boot_timeout`, and the job it was launched for is over

Never terminated: an instance without our cluster tag, one whose alive agent runs a job, one still booting.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable

import msgspec

from incl.proto.messages import Job, JobState
from incl.proto.spec import Resources as Wanted

TAG_CLUSTER = "incl:cluster"
TAG_JOB = "incl:job"
TAG_ATTEMPT = "incl:attempt"
TAG_GENERATION = "incl:generation"
TAG_ROLE = "incl:role"
ROLE_AGENT = "agent"

# EC2 instance states of an instance that still exists (and still costs); the others are on their way out.
EXISTING = frozenset({"pending", "running", "stopping", "stopped"})


class _Struct(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class Market(enum.StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on_demand"
    AUTO = "auto"  # spot until the job has been preempted `max_preemptions` times, then on-demand


class ReconcileConfig(_Struct, frozen=True):
    cluster: str = "incl"  # the value of the `incl:cluster` tag on everything this controller launches
    interval: float = 30.0  # seconds between reconcile passes
    boot_timeout: float = 900.0  # launch to first registration; the GPU AMI takes a few minutes
    idle_timeout: float = 600.0  # an agent that runs nothing for this long is terminated
    max_preemptions: int = 2  # `auto` jobs go on-demand after this many spot preemptions
    default_market: Market = Market.AUTO  # for jobs whose `resources.spot` is unset


class Demand(_Struct, frozen=True):
    """A queued job that needs an instance: the attempt it will run as, and where it may run."""
    job_id: str
    attempt: int
    resources: Wanted = Wanted()
    market: Market = Market.AUTO
    preemptions: int = 0
    max_preemptions: int | None = None  # the job's own `retry.max_preemptions` (None: the cluster's)


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


class ObservedInstance(_Struct, frozen=True):
    """One instance as the provider describes it."""
    instance_id: str
    state: str  # EC2's state name: pending, running, shutting-down, terminated, stopping, stopped
    instance_type: str
    market: Market  # SPOT or ON_DEMAND
    launched_at: float
    tags: dict[str, str] = {}
    availability_zone: str | None = None
    state_reason: str | None = None  # e.g. Server.SpotInstanceTermination

    @property
    def job_id(self) -> str | None:
        return self.tags.get(TAG_JOB)

    @property
    def attempt(self) -> int | None:
        return _number(self.tags.get(TAG_ATTEMPT))

    @property
    def generation(self) -> int | None:
        """Which launch of its attempt this is (0 first); None on an instance launched before the tag existed."""
        return _number(self.tags.get(TAG_GENERATION))


class RegisteredAgent(_Struct, frozen=True):
    """An agent that registered from an instance; `alive` False once the controller declared it lost."""
    agent_id: str
    instance_id: str
    alive: bool = True
    running: int = 0  # attempts on it now
    idle_since: float | None = None  # when it last became empty; None while it runs something


class Launch(_Struct, frozen=True):
    cluster: str
    job_id: str
    attempt: int
    market: Market  # SPOT or ON_DEMAND, never AUTO
    resources: Wanted = Wanted()
    generation: int = 0  # 0 for the first launch of the attempt, then one more for each relaunch after a loss


class Reason(enum.StrEnum):
    NEVER_REGISTERED = "never_registered"
    IDLE = "idle"
    ORPHAN = "orphan"


class Termination(_Struct, frozen=True):
    instance_id: str
    reason: Reason
    detail: str


class Plan(_Struct, frozen=True):
    launches: list[Launch] = []
    terminations: list[Termination] = []


def market_of(spot: bool | str | None, default: Market = Market.AUTO) -> Market:
    """A job's `resources.spot` (true, false, "auto", unset) as a market."""
    if spot is None:
        return default
    if spot == "auto":
        return Market.AUTO
    return Market.SPOT if spot else Market.ON_DEMAND


def demand_of(job: Job, config: ReconcileConfig) -> Demand:
    """The capacity a queued job needs for its next attempt."""
    res = job.spec.resources
    return Demand(job_id=job.id, attempt=len(job.attempts) + 1, resources=res,
                  market=market_of(res.spot, config.default_market),
                  preemptions=sum(a.state is JobState.PREEMPTED for a in job.attempts),
                  max_preemptions=job.spec.retry.max_preemptions)


def launch_market(demand: Demand, config: ReconcileConfig) -> Market:
    if demand.market is Market.ON_DEMAND:
        return Market.ON_DEMAND
    limit = config.max_preemptions if demand.max_preemptions is None else demand.max_preemptions
    if demand.market is Market.AUTO and demand.preemptions >= limit:
        return Market.ON_DEMAND
    return Market.SPOT


def _termination(inst: ObservedInstance, agent: RegisteredAgent | None, live_jobs: Collection[str],
                 config: ReconcileConfig, now: float) -> Termination | None:
    if agent is not None and agent.alive:
        if agent.running > 0 or agent.idle_since is None or now - agent.idle_since < config.idle_timeout:
            return None
        return Termination(instance_id=inst.instance_id, reason=Reason.IDLE,
                           detail=f"agent {agent.agent_id} idle for {now - agent.idle_since:.0f}s")
    if now - inst.launched_at < config.boot_timeout:
        return None  # still booting: not registered yet, or its agent restarting
    if agent is None:
        return Termination(instance_id=inst.instance_id, reason=Reason.NEVER_REGISTERED,
                           detail=f"no agent registered {now - inst.launched_at:.0f}s after launch")
    if inst.job_id not in live_jobs:
        return Termination(instance_id=inst.instance_id, reason=Reason.ORPHAN,
                           detail=f"agent {agent.agent_id} lost and job {inst.job_id} is over")
    return None


def next_generation(tagged: Collection[ObservedInstance]) -> int:
    """The generation of the next launch of an attempt, given every instance tagged with it: their count, and
    past the highest generation tag (EC2 forgets terminated instances after about an hour, but an idempotency
    token for at least a day, so a number must never come round again)."""
    return max(len(tagged), 1 + max((g for i in tagged if (g := i.generation) is not None), default=-1))


def _ours(observed: Iterable[ObservedInstance], cluster: str) -> list[ObservedInstance]:
    return sorted((i for i in observed if i.tags.get(TAG_CLUSTER) == cluster), key=lambda i: i.instance_id)


def plan(desired: Iterable[Demand], observed: Iterable[ObservedInstance], agents: Iterable[RegisteredAgent],
         config: ReconcileConfig, now: float, *, live_jobs: Collection[str] = ()) -> Plan:
    """`live_jobs`: ids of jobs that are not over (assigned, running...) besides the desired ones."""
    wanted = {(d.job_id, d.attempt): d for d in desired}
    live = {*live_jobs, *(job for job, _ in wanted)}
    # An instance whose agent was lost and registered again has two records: the alive one sorts last and wins.
    by_instance = {a.instance_id: a for a in sorted(agents, key=lambda a: (a.alive, a.agent_id))}
    instances = _ours(observed, config.cluster)
    terminations = [t for i in instances if i.state in EXISTING
                    if (t := _termination(i, by_instance.get(i.instance_id), live, config, now))]
    going = {t.instance_id for t in terminations}
    tagged: dict[tuple[str, int], list[ObservedInstance]] = {}
    for inst in instances:
        if inst.job_id is not None and inst.attempt is not None:
            tagged.setdefault((inst.job_id, inst.attempt), []).append(inst)
    launches: list[Launch] = []
    for key in sorted(wanted):
        found = tagged.get(key, [])
        if any(i.state in EXISTING and i.instance_id not in going for i in found):
            continue  # launched already: booting, or an agent the scheduler can use
        d = wanted[key]
        launches.append(Launch(cluster=config.cluster, job_id=d.job_id, attempt=d.attempt,
                               market=launch_market(d, config), resources=d.resources,
                               generation=next_generation(found)))
    return Plan(launches=launches, terminations=terminations)
