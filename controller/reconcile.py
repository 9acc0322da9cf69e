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
                 A multi-node job (a gang, `resources.nodes` > 1) is one launch of `nodes` instances, one per
                 rank (`incl:rank`), all of one generation: the provider launches them together or not at all.
    terminate    never_registered  no agent ever registered from it within `boot_timeout` of its launch
                 idle              its agent is alive, runs nothing, and has for `idle_timeout`; never while
                                   it waits, registered, for the rest of its gang to come up
                 orphan            no live agent, past `boot_timeout`, and the job it was launched for is over
                 gang_broken       an instance of a waiting gang whose generation lost a member (one never
                                   registered, or was reclaimed while booting), or that is short of members
                                   past `boot_timeout`: the rest go and the gang is launched whole again,
                                   as the next generation
    delete_groups  a placement group of ours whose launch (job, attempt, generation) has no instance left and
                 is not launched by this plan
    held         the instances of gangs that still wait, each with its gang's job: nothing else should be placed
                 on their agents

Never terminated: an instance without our cluster tag, one whose alive agent runs a job, one still booting (but
for a broken gang's members).
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
TAG_RANK = "incl:rank"  # a gang's instance: which rank it was launched for (0 to nodes - 1)
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
    launch_index: int = 0  # its place among the instances of one RunInstances (EC2's AmiLaunchIndex)

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

    @property
    def rank(self) -> int | None:
        return _number(self.tags.get(TAG_RANK))


class ObservedGroup(_Struct, frozen=True):
    """A placement group as the provider describes it, with its tags (those of the launch it was made for)."""
    name: str
    tags: dict[str, str] = {}

    def launch_key(self) -> tuple[str, int, int] | None:
        job, attempt = self.tags.get(TAG_JOB), _number(self.tags.get(TAG_ATTEMPT))
        generation = _number(self.tags.get(TAG_GENERATION))
        return None if job is None or attempt is None or generation is None else (job, attempt, generation)


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

    @property
    def nodes(self) -> int:
        """How many instances this launch makes: one per rank of a gang, else one."""
        return max(1, self.resources.nodes)


class Reason(enum.StrEnum):
    NEVER_REGISTERED = "never_registered"
    IDLE = "idle"
    ORPHAN = "orphan"
    GANG_BROKEN = "gang_broken"


class Termination(_Struct, frozen=True):
    instance_id: str
    reason: Reason
    detail: str


class Plan(_Struct, frozen=True):
    launches: list[Launch] = []
    terminations: list[Termination] = []
    delete_groups: list[str] = []  # placement groups with no instance left
    held: dict[str, str] = {}  # instance id -> the waiting gang (job id) it was launched for


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
                 config: ReconcileConfig, now: float, *, waiting_gang: bool = False) -> Termination | None:
    if agent is not None and agent.alive:
        if agent.running > 0 or agent.idle_since is None or now - agent.idle_since < config.idle_timeout:
            return None
        if waiting_gang:
            return None  # registered, waiting for the rest of its gang
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


def next_gang_generation(tagged: Collection[ObservedInstance]) -> int:
    """The generation of the next launch of a gang's attempt: past every generation tagged (a gang launch is
    `nodes` instances of one generation, so the count of instances says nothing)."""
    return 1 + max((g for i in tagged if (g := i.generation) is not None), default=-1)


def _gen(inst: ObservedInstance) -> int:
    return inst.generation if inst.generation is not None else 0


class _Gang(_Struct, frozen=True):
    """What one waiting gang needs: its members to terminate, whether to launch it again, those it holds."""
    victims: list[Termination] = []
    launch: bool = False
    held: list[str] = []


def _gang(d: Demand, found: list[ObservedInstance], by_instance: dict[str, RegisteredAgent], going: set[str],
          config: ReconcileConfig, now: float) -> _Gang:
    """A gang serves its demand while its newest generation has `nodes` members; a generation that lost one (or
    is still short of members `boot_timeout` after its launch) is broken: its other members go, and it is
    launched whole again. Members of older generations still up go too. An alive agent running a job is never
    terminated here (something else was placed on it)."""
    existing = [i for i in found if i.state in EXISTING]
    if not existing:
        return _Gang(launch=True)
    latest = max(_gen(i) for i in existing)
    members = [i for i in found if _gen(i) == latest]
    up = [i for i in members if i.state in EXISTING and i.instance_id not in going]
    short = len(up) < d.resources.nodes
    lost = len(up) < len(members)
    broken = short and (lost or now - min(i.launched_at for i in members) >= config.boot_timeout)
    victims = [i for i in existing if i.instance_id not in going and (_gen(i) != latest or broken)]
    why = (f"gang {d.job_id} attempt {d.attempt} generation {latest}: {len(up)} of {d.resources.nodes} "
           f"members {'left' if lost else 'came up'}")
    terminations = [Termination(instance_id=i.instance_id, reason=Reason.GANG_BROKEN,
                                detail=why if _gen(i) == latest else f"superseded by generation {latest}")
                    for i in victims if not _busy(by_instance.get(i.instance_id))]
    return _Gang(victims=terminations, launch=broken, held=[] if broken else [i.instance_id for i in up])


def _busy(agent: RegisteredAgent | None) -> bool:
    return agent is not None and agent.alive and agent.running > 0


def _waiting_members(wanted: dict[tuple[str, int], Demand], tagged: dict[tuple[str, int], list[ObservedInstance]],
                     by_instance: dict[str, RegisteredAgent]) -> set[str]:
    """Instances of waiting gangs whose newest generation has fewer alive agents than ranks: the registered ones
    wait for the rest, and are not idle."""
    spare: set[str] = set()
    for key, d in wanted.items():
        existing = [i for i in tagged.get(key, []) if i.state in EXISTING]
        if d.resources.nodes <= 1 or not existing:
            continue
        latest = max(_gen(i) for i in existing)
        members = [i for i in existing if _gen(i) == latest]
        alive = [i for i in members if (a := by_instance.get(i.instance_id)) is not None and a.alive]
        if len(alive) < d.resources.nodes:
            spare.update(i.instance_id for i in members)
    return spare


def _ours(observed: Iterable[ObservedInstance], cluster: str) -> list[ObservedInstance]:
    return sorted((i for i in observed if i.tags.get(TAG_CLUSTER) == cluster), key=lambda i: i.instance_id)


def plan(desired: Iterable[Demand], observed: Iterable[ObservedInstance], agents: Iterable[RegisteredAgent],
         config: ReconcileConfig, now: float, *, live_jobs: Collection[str] = (),
         groups: Iterable[ObservedGroup] = (), launching: Collection[tuple[str, int]] = ()) -> Plan:
    """`live_jobs`: ids of jobs that are not over (assigned, running...) besides the desired ones; `groups`: the
    placement groups the provider shows; `launching`: (job, attempt) of each launch in flight or ended since
    `observed` was read. The view of those may be stale (a gang's launch that terminated a partial set of its
    instances shows those alone), so none of them is launched again by this plan."""
    wanted = {(d.job_id, d.attempt): d for d in desired}
    live = {*live_jobs, *(job for job, _ in wanted)}
    # An instance whose agent was lost and registered again has two records: the alive one sorts last and wins.
    by_instance = {a.instance_id: a for a in sorted(agents, key=lambda a: (a.alive, a.agent_id))}
    instances = _ours(observed, config.cluster)
    tagged: dict[tuple[str, int], list[ObservedInstance]] = {}
    for inst in instances:
        if inst.job_id is not None and inst.attempt is not None:
            tagged.setdefault((inst.job_id, inst.attempt), []).append(inst)
    spare = _waiting_members(wanted, tagged, by_instance)
    terminations = [t for i in instances if i.state in EXISTING
                    if (t := _termination(i, by_instance.get(i.instance_id), live, config, now,
                                          waiting_gang=i.instance_id in spare))]
    going = {t.instance_id for t in terminations}
    launches: list[Launch] = []
    held: dict[str, str] = {}
    for key in sorted(wanted):
        found = tagged.get(key, [])
        d = wanted[key]
        if d.resources.nodes > 1:
            gang = _gang(d, found, by_instance, going, config, now)
            terminations += gang.victims
            going.update(t.instance_id for t in gang.victims)
            held.update(dict.fromkeys(gang.held, d.job_id))
            if gang.launch and key not in launching:
                launches.append(Launch(cluster=config.cluster, job_id=d.job_id, attempt=d.attempt,
                                       market=launch_market(d, config), resources=d.resources,
                                       generation=next_gang_generation(found)))
            continue
        if key in launching or any(i.state in EXISTING and i.instance_id not in going for i in found):
            continue  # launched already: booting, or an agent the scheduler can use
        launches.append(Launch(cluster=config.cluster, job_id=d.job_id, attempt=d.attempt,
                               market=launch_market(d, config), resources=d.resources,
                               generation=next_generation(found)))
    return Plan(launches=launches, terminations=terminations, held=held,
                delete_groups=_stale_groups(groups, instances, launches, config))


def _stale_groups(groups: Iterable[ObservedGroup], instances: list[ObservedInstance], launches: list[Launch],
                  config: ReconcileConfig) -> list[str]:
    """Our placement groups whose launch has no instance left and is not launched now."""
    used = {(i.job_id, i.attempt, _gen(i)) for i in instances if i.state in EXISTING}
    used |= {(x.job_id, x.attempt, x.generation) for x in launches}
    return sorted(g.name for g in groups if g.tags.get(TAG_CLUSTER) == config.cluster
                  if (key := g.launch_key()) is not None and key not in used)
