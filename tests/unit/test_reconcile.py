"""Provisioning is a pure diff: launches (and relaunches after a loss), terminations with their reasons, and its
invariants."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from incl.controller.providers.aws import client_token
from incl.controller.reconcile import (
    EXISTING,
    TAG_ATTEMPT,
    TAG_CLUSTER,
    TAG_GENERATION,
    TAG_JOB,
    TAG_RANK,
    Demand,
    Launch,
    Market,
    ObservedGroup,
    ObservedInstance,
    Plan,
    Reason,
    ReconcileConfig,
    RegisteredAgent,
    demand_of,
    market_of,
    plan,
)
from incl.proto.messages import Attempt, Job, JobState
from incl.proto.spec import Resources, load_spec

CFG = ReconcileConfig(cluster="c1", boot_timeout=600, idle_timeout=300, max_preemptions=2)
NOW = 10_000.0


def inst(iid: str, job: str | None = "j1", attempt: int | None = 1, state: str = "running",
         launched: float = NOW - 60, cluster: str | None = "c1", reason: str | None = None,
         generation: int | None = None) -> ObservedInstance:
    tags = {TAG_CLUSTER: cluster} if cluster else {}
    if job is not None:
        tags[TAG_JOB] = job
    if attempt is not None:
        tags[TAG_ATTEMPT] = str(attempt)
    if generation is not None:
        tags[TAG_GENERATION] = str(generation)
    return ObservedInstance(instance_id=iid, state=state, instance_type="g5.xlarge", market=Market.SPOT,
                            launched_at=launched, tags=tags, state_reason=reason)


def agent(iid: str, running: int = 0, idle_since: float | None = None, alive: bool = True) -> RegisteredAgent:
    return RegisteredAgent(agent_id=iid, instance_id=iid, alive=alive, running=running, idle_since=idle_since)


def want(job: str = "j1", attempt: int = 1, market: Market = Market.AUTO, preemptions: int = 0,
         max_preemptions: int | None = None) -> Demand:
    return Demand(job_id=job, attempt=attempt, resources=Resources(gpus=1), market=market, preemptions=preemptions,
                  max_preemptions=max_preemptions)


def gang(job: str = "g", attempt: int = 1, nodes: int = 2) -> Demand:
    return Demand(job_id=job, attempt=attempt, resources=Resources(gpus=1, nodes=nodes))


def member(iid: str, rank: int, generation: int = 0, job: str = "g", **kw: object) -> ObservedInstance:
    i = inst(iid, job=job, generation=generation, **kw)  # type: ignore[arg-type]
    return ObservedInstance(**{**{f: getattr(i, f) for f in i.__struct_fields__},
                               "tags": {**i.tags, TAG_RANK: str(rank)}})


def reasons(p: Plan) -> dict[str, Reason]:
    return {t.instance_id: t.reason for t in p.terminations}


# --- launches -----------------------------------------------------------------------------------------------


def test_a_queued_job_with_no_instance_gets_one_spot_launch_tagged_for_its_attempt() -> None:
    """One launch per job: the cluster, job, attempt and resources it needs, spot by default."""
    p = plan([want("j1"), want("j2", attempt=3)], [], [], CFG, NOW)
    assert p.launches == [
        Launch(cluster="c1", job_id="j1", attempt=1, market=Market.SPOT, resources=Resources(gpus=1)),
        Launch(cluster="c1", job_id="j2", attempt=3, market=Market.SPOT, resources=Resources(gpus=1)),
    ]
    assert p.terminations == [] and all(x.generation == 0 for x in p.launches)


def test_market_on_demand_when_asked_and_auto_after_max_preemptions() -> None:
    """on_demand stays on-demand; auto turns on-demand at max_preemptions; spot=true stays spot."""
    p = plan([want("od", market=Market.ON_DEMAND), want("a1", market=Market.AUTO, preemptions=1),
              want("a2", market=Market.AUTO, preemptions=2), want("s", market=Market.SPOT, preemptions=9)],
             [], [], CFG, NOW)
    assert {x.job_id: x.market for x in p.launches} == {
        "od": Market.ON_DEMAND, "a1": Market.SPOT, "a2": Market.ON_DEMAND, "s": Market.SPOT}


def test_a_jobs_own_max_preemptions_overrides_the_clusters() -> None:
    """`retry.max_preemptions` in the spec decides when an auto job goes on-demand."""
    p = plan([want("early", market=Market.AUTO, preemptions=1, max_preemptions=1),
              want("late", market=Market.AUTO, preemptions=2, max_preemptions=5)], [], [], CFG, NOW)
    assert {x.job_id: x.market for x in p.launches} == {"early": Market.ON_DEMAND, "late": Market.SPOT}


def test_no_second_launch_while_the_attempts_instance_boots_or_serves() -> None:
    """An existing instance tagged with the job and attempt (pending, running, stopped) means no new launch."""
    for state in ("pending", "running", "stopped"):
        assert plan([want()], [inst("i-1", state=state)], [], CFG, NOW).launches == []
    assert plan([want(), want()], [], [], CFG, NOW).launches == [  # listed twice, launched once
        Launch(cluster="c1", job_id="j1", attempt=1, market=Market.SPOT, resources=Resources(gpus=1))]


def test_a_new_attempt_gets_its_own_instance() -> None:
    """Attempt 2 launches although attempt 1's instance still exists (its agent may be lost)."""
    p = plan([want(attempt=2)], [inst("i-1", attempt=1)], [agent("i-1", running=1)], CFG, NOW)
    assert [(x.job_id, x.attempt) for x in p.launches] == [("j1", 2)]


def test_an_instance_that_died_while_booting_is_relaunched_as_the_next_generation() -> None:
    """A spot instance reclaimed before the job ran: the same attempt is launched again, generation 1."""
    gone = inst("i-1", state="terminated", reason="Server.SpotInstanceTermination", generation=0)
    p = plan([want()], [gone], [], CFG, NOW)
    assert p.terminations == []
    assert p.launches == [Launch(cluster="c1", job_id="j1", attempt=1, market=Market.SPOT,
                                 resources=Resources(gpus=1), generation=1)]


def test_an_instance_terminated_by_this_plan_is_replaced_in_the_same_plan() -> None:
    """Never registered and terminated now: its attempt is launched again, as the next generation."""
    p = plan([want()], [inst("i-1", launched=NOW - 601, generation=0)], [], CFG, NOW)
    assert reasons(p) == {"i-1": Reason.NEVER_REGISTERED}
    assert [(x.job_id, x.attempt, x.generation) for x in p.launches] == [("j1", 1, 1)]


def test_a_launch_retried_after_a_crash_is_the_same_launch() -> None:
    """A controller that crashed after RunInstances, before the instance showed in DescribeInstances (EC2 is
    eventually consistent), plans the same launch again, generation included, so its ClientToken is the same and
    EC2 answers with the instance it made; once that instance shows, nothing is launched."""
    dead = inst("i-1", state="terminated", generation=0)
    before = plan([want()], [dead], [], CFG, NOW).launches
    after_restart = plan([want()], [dead], [], CFG, NOW + 5).launches
    assert before == after_restart and [x.generation for x in before] == [1]
    assert client_token(before[0], "g5.xlarge", "subnet-1") == client_token(after_restart[0], "g5.xlarge", "subnet-1")
    assert plan([want()], [dead, inst("i-2", state="pending", generation=1)], [], CFG, NOW + 5).launches == []


def test_generations_count_every_tagged_instance_and_never_come_round_again() -> None:
    """Two dead launches make the next generation 2; once EC2 forgets old terminated instances the number still
    goes past the highest generation seen, so a token already spent on a relaunch is never reused."""
    dead = [inst(f"i-{g}", state="terminated", generation=g) for g in range(2)]
    assert [x.generation for x in plan([want()], dead, [], CFG, NOW).launches] == [2]
    only_last = [inst("i-3", state="shutting-down", generation=3)]
    assert [x.generation for x in plan([want()], only_last, [], CFG, NOW).launches] == [4]
    untagged = [inst("i-old", state="terminated")]  # launched before the generation tag existed
    assert [x.generation for x in plan([want()], untagged, [], CFG, NOW).launches] == [1]
    assert client_token(Launch(cluster="c1", job_id="j1", attempt=1, market=Market.SPOT), "g5.xlarge", None) != \
        client_token(Launch(cluster="c1", job_id="j1", attempt=1, market=Market.SPOT, generation=1), "g5.xlarge", None)


# --- terminations ---------------------------------------------------------------------------------------------


def test_never_registered_only_after_boot_timeout() -> None:
    """No agent from the instance: kept while it boots, terminated once boot_timeout has passed."""
    assert plan([], [inst("i-1", launched=NOW - 599)], [], CFG, NOW).terminations == []
    p = plan([], [inst("i-1", launched=NOW - 600)], [], CFG, NOW)
    assert reasons(p) == {"i-1": Reason.NEVER_REGISTERED} and "600s after launch" in p.terminations[0].detail


def test_idle_after_idle_timeout_and_never_while_running_a_job() -> None:
    """An empty agent goes after idle_timeout; a busy one never, however old."""
    old = NOW - 10_000
    observed = [inst("i-idle", launched=old), inst("i-fresh", launched=old), inst("i-busy", launched=old)]
    agents = [agent("i-idle", idle_since=NOW - 300), agent("i-fresh", idle_since=NOW - 299),
              agent("i-busy", running=1)]
    p = plan([], observed, agents, CFG, NOW)
    assert reasons(p) == {"i-idle": Reason.IDLE} and "idle for 300s" in p.terminations[0].detail


def test_orphan_when_its_agent_is_lost_and_its_job_is_over() -> None:
    """Lost agent and finished job: orphan. Lost agent but the job still live, or still booting: kept."""
    old = NOW - 10_000
    observed = [inst("i-orphan", job="done", launched=old), inst("i-live", job="running", launched=old),
                inst("i-young", job="done", launched=NOW - 10)]
    agents = [agent("i-orphan", alive=False), agent("i-live", alive=False), agent("i-young", alive=False)]
    p = plan([], observed, agents, CFG, NOW, live_jobs={"running"})
    assert reasons(p) == {"i-orphan": Reason.ORPHAN}


def test_an_agent_that_registered_again_counts_as_alive() -> None:
    """Two records for one instance (lost, then registered again): the alive one decides."""
    agents = [agent("i-1", alive=False), RegisteredAgent(agent_id="i-1b", instance_id="i-1", running=1)]
    assert plan([], [inst("i-1", launched=NOW - 10_000)], agents, CFG, NOW).terminations == []


def test_never_touches_an_instance_without_our_cluster_tag() -> None:
    """Untagged, or tagged for another cluster: never terminated, never counted for a job."""
    old = NOW - 10_000
    observed = [inst("i-none", cluster=None, launched=old), inst("i-other", cluster="c2", launched=old)]
    p = plan([want()], observed, [], CFG, NOW)
    assert p.terminations == [] and [x.job_id for x in p.launches] == ["j1"]


def test_instances_on_their_way_out_are_not_terminated_again() -> None:
    """shutting-down and terminated instances are never in the plan's terminations."""
    old = NOW - 10_000
    observed = [inst("i-1", state="shutting-down", launched=old), inst("i-2", state="terminated", launched=old)]
    assert plan([], observed, [], CFG, NOW).terminations == []


# --- from jobs ------------------------------------------------------------------------------------------------


def test_demand_of_a_job_counts_attempts_and_preemptions() -> None:
    """The next attempt number, preemptions so far, and the market from resources.spot."""
    spec = load_spec({"run": "x", "resources": {"gpus": "H100:8"}})
    attempts = [Attempt(number=n, agent_id="a", state=s, assigned_at=0.0)
                for n, s in ((1, JobState.PREEMPTED), (2, JobState.LOST), (3, JobState.PREEMPTED))]
    job = Job(id="j", spec=spec, user="u", state=JobState.QUEUED, submitted_at=0, updated_at=0, attempts=attempts)
    d = demand_of(job, CFG)
    assert (d.attempt, d.preemptions, d.market, d.resources.gpus, d.resources.gpu_model) == \
        (4, 2, Market.AUTO, 8, "H100")
    assert [market_of(v) for v in (True, False, "auto", None)] == \
        [Market.SPOT, Market.ON_DEMAND, Market.AUTO, Market.AUTO]
    assert market_of(None, Market.ON_DEMAND) is Market.ON_DEMAND


# --- gangs (multi-node jobs) -----------------------------------------------------------------------------------


def test_a_gang_is_one_launch_of_nodes_instances() -> None:
    """A queued 2-node job: one launch (the provider makes both ranks together), generation 0; none once its
    members exist, booting or registered."""
    p = plan([gang()], [], [], CFG, NOW)
    assert p.launches == [Launch(cluster="c1", job_id="g", attempt=1, market=Market.SPOT,
                                 resources=Resources(gpus=1, nodes=2))]
    assert p.launches[0].nodes == 2
    both = [member("i-0", 0), member("i-1", 1)]
    p = plan([gang()], both, [agent("i-0", idle_since=NOW - 5)], CFG, NOW)
    assert p.launches == [] and p.terminations == [] and p.held == {"i-0": "g", "i-1": "g"}


def test_a_gang_still_coming_up_is_left_alone() -> None:
    """One member visible, nothing lost, younger than boot_timeout: no relaunch, no termination."""
    p = plan([gang()], [member("i-0", 0)], [], CFG, NOW)
    assert p.launches == [] and p.terminations == []


def test_a_member_reclaimed_while_booting_takes_the_rest_down_and_the_gang_is_relaunched_whole() -> None:
    """Rank 1 reclaimed before the job ran: rank 0 (registered and idle) is terminated as gang_broken and the
    gang launched again as generation 1."""
    gone = member("i-1", 1, state="terminated", reason="Server.SpotInstanceTermination")
    p = plan([gang()], [member("i-0", 0), gone], [agent("i-0", idle_since=NOW - 5)], CFG, NOW)
    assert reasons(p) == {"i-0": Reason.GANG_BROKEN} and "1 of 2 members left" in p.terminations[0].detail
    assert [(x.job_id, x.generation, x.nodes) for x in p.launches] == [("g", 1, 2)] and p.held == {}


def test_a_member_that_never_registers_takes_the_rest_down_in_the_same_plan() -> None:
    """Rank 1 never registered within boot_timeout: it goes as never_registered, rank 0 (registered) as
    gang_broken, and generation 1 is launched."""
    old = NOW - 601
    p = plan([gang()], [member("i-0", 0, launched=old), member("i-1", 1, launched=old)],
             [agent("i-0", idle_since=NOW - 500)], CFG, NOW)
    assert reasons(p) == {"i-1": Reason.NEVER_REGISTERED, "i-0": Reason.GANG_BROKEN}
    assert [x.generation for x in p.launches] == [1]


def test_a_gang_short_of_members_past_boot_timeout_is_relaunched() -> None:
    """Only one member ever showed (nothing terminated) and boot_timeout passed: broken, relaunched whole."""
    p = plan([gang()], [member("i-0", 0, launched=NOW - 600)], [agent("i-0", idle_since=NOW - 500)], CFG, NOW)
    assert reasons(p) == {"i-0": Reason.GANG_BROKEN} and [x.generation for x in p.launches] == [1]


def test_a_registered_member_waiting_for_its_gang_is_not_idle() -> None:
    """Rank 0 registered long ago and idle past idle_timeout while rank 1 still boots: kept (and held). Once its
    gang no longer waits, the idle rule applies again."""
    members = [member("i-0", 0), member("i-1", 1, launched=NOW - 10)]
    agents = [agent("i-0", idle_since=NOW - 400)]
    p = plan([gang()], members, agents, CFG, NOW)
    assert p.terminations == [] and p.held == {"i-0": "g", "i-1": "g"}
    assert reasons(plan([], members, agents, CFG, NOW)) == {"i-0": Reason.IDLE}


def test_a_broken_gang_never_terminates_a_member_that_runs_another_job() -> None:
    """A member some other job was placed on survives its gang's relaunch."""
    gone = member("i-1", 1, state="terminated")
    p = plan([gang()], [member("i-0", 0), gone], [agent("i-0", running=1)], CFG, NOW)
    assert p.terminations == [] and [x.generation for x in p.launches] == [1]


def test_relaunches_of_a_gang_number_past_every_generation_and_supersede_old_members() -> None:
    """Generation 0 terminated (two instances) and generation 1 in flight: the plan asks for generation 1 again
    (the provisioner's in-flight launch, or the provider's idempotency, answers it), never 2; a member of an old
    generation still up once a newer one exists goes."""
    dead = [member("i-0", 0, state="shutting-down"), member("i-1", 1, state="terminated")]
    assert [x.generation for x in plan([gang()], dead, [], CFG, NOW).launches] == [1]
    new = [member("i-2", 0, generation=1), member("i-3", 1, generation=1)]
    p = plan([gang()], [member("i-0", 0), *new], [], CFG, NOW)
    assert reasons(p) == {"i-0": Reason.GANG_BROKEN} and p.launches == []
    assert "superseded" in p.terminations[0].detail


def test_a_gang_whose_launch_is_in_flight_or_landed_after_the_observation_is_not_launched_again() -> None:
    """The provider's view read while generation 1 was launching shows only the partial set that launch terminated
    (tagged generation 1): without the in-flight mark the plan would launch generation 2 and supersede generation 1
    once it landed (seen in CI). Marked as launching, nothing is launched; a single-node job the same."""
    stale = [member("i-0", 0, state="terminated"), member("i-1", 1, state="terminated"),
             member("i-2", 0, state="shutting-down", generation=1)]
    assert [x.generation for x in plan([gang()], stale, [], CFG, NOW).launches] == [2]
    assert plan([gang()], stale, [], CFG, NOW, launching={("g", 1)}).launches == []
    assert plan([want()], [], [], CFG, NOW, launching={("j1", 1)}).launches == []
    assert len(plan([want()], [], [], CFG, NOW, launching={("j1", 2)}).launches) == 1


def test_placement_groups_with_no_instance_left_are_deleted() -> None:
    """A group whose launch's instances are all gone is deleted; one with a member up, one being launched by
    this plan, another cluster's and an untagged one are kept."""
    def group(name: str, job: str, generation: int, cluster: str = "c1") -> ObservedGroup:
        return ObservedGroup(name=name, tags={TAG_CLUSTER: cluster, TAG_JOB: job, TAG_ATTEMPT: "1",
                                              TAG_GENERATION: str(generation)})
    groups = [group("pg-old", "g", 0), group("pg-new", "g", 1), group("pg-up", "h", 0), group("pg-x", "g", 0, "c2"),
              ObservedGroup(name="pg-bare")]
    observed = [member("i-0", 0, state="terminated"), member("i-1", 1, state="terminated"), member("i-2", 0, job="h")]
    p = plan([gang()], observed, [], CFG, NOW, groups=groups)
    assert [x.generation for x in p.launches] == [1] and p.delete_groups == ["pg-old"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pending", "running", "shutting-down", "terminated"]),
                          st.integers(0, 2), st.sampled_from([0.0, 10.0, 600.0]),
                          st.sampled_from(["none", "idle", "busy", "lost"])), max_size=6))
def test_gang_invariants(members: list[tuple[str, int, float, str]]) -> None:
    """For any state of a 2-node gang's instances: never a busy member terminated, never two launches, a launch
    only as a generation past every one seen, and a launch exactly when no generation is whole or coming up."""
    observed = [member(f"i-{n}", n % 2, generation=g, state=s, launched=NOW - age)
                for n, (s, g, age, _) in enumerate(members)]
    agents = [agent(f"i-{n}", running=int(a == "busy"), idle_since=NOW - 400 if a == "idle" else None,
                    alive=a != "lost") for n, (_, _, _, a) in enumerate(members) if a != "none"]
    p = plan([gang()], observed, agents, CFG, NOW)
    busy = {f"i-{n}" for n, m in enumerate(members) if m[3] == "busy"}
    assert not busy & {t.instance_id for t in p.terminations}
    assert len(p.launches) <= 1 and len({t.instance_id for t in p.terminations}) == len(p.terminations)
    for x in p.launches:
        assert x.generation > max((g for _, g, _, _ in members), default=-1) and x.nodes == 2
    going = {t.instance_id for t in p.terminations}
    left = [i for i in observed if i.state in EXISTING and i.instance_id not in going]
    if p.launches:
        assert all(i.instance_id in busy for i in left)  # only what runs another job outlives a relaunch
    else:
        ids = {i.instance_id for i in left}
        assert left and ids - busy <= set(p.held) <= ids  # the gang holds what it still has


# --- invariants -----------------------------------------------------------------------------------------------

JOBS = st.sampled_from(["j1", "j2", "j3", "j4"])
STATES = st.sampled_from(["pending", "running", "stopping", "stopped", "shutting-down", "terminated"])


AGES = st.sampled_from([0.0, 599.0, 600.0, 5000.0])  # around boot_timeout (600) and idle_timeout (300)
IDLE = st.none() | st.sampled_from([0.0, 299.0, 300.0, 5000.0])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Demand], list[ObservedInstance], list[RegisteredAgent], set[str]]:
    desired = draw(st.lists(st.builds(Demand, job_id=JOBS, attempt=st.integers(1, 3),
                                      market=st.sampled_from(list(Market)), preemptions=st.integers(0, 4)),
                            max_size=6, unique_by=lambda d: (d.job_id, d.attempt)))
    ids = [f"i-{n}" for n in range(draw(st.integers(0, 8)))]
    observed = [inst(i, job=draw(st.none() | JOBS), attempt=draw(st.none() | st.integers(1, 3)),
                     state=draw(STATES), launched=NOW - draw(AGES), generation=draw(st.none() | st.integers(0, 3)),
                     cluster=draw(st.sampled_from(["c1", "c1", "c1", "c2", None]))) for i in ids]
    agents = [RegisteredAgent(agent_id=f"a-{i}", instance_id=i, alive=draw(st.booleans()),
                              running=draw(st.integers(0, 2)), idle_since=(None if (idle := draw(IDLE)) is None
                                                                           else NOW - idle))
              for i in ids if draw(st.integers(0, 3))]
    live = set(draw(st.lists(JOBS, max_size=3)))
    return desired, observed, agents, live


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_invariants(world: tuple[list[Demand], list[ObservedInstance], list[RegisteredAgent], set[str]]) -> None:
    """For any world: only our existing instances go, never one running a job or booting; one launch at most
    per job and attempt, and only for a demand no instance of ours still serves, as a generation past every one
    tagged for it; every demand is launched or covered; the plan does not depend on the order of its inputs."""
    desired, observed, agents, live = world
    p = plan(desired, observed, agents, CFG, NOW, live_jobs=live)
    by_id = {i.instance_id: i for i in observed}
    alive = {a.instance_id: a for a in agents if a.alive}
    for t in p.terminations:
        i = by_id[t.instance_id]
        assert i.tags.get(TAG_CLUSTER) == "c1" and i.state in EXISTING
        assert not (t.instance_id in alive and alive[t.instance_id].running > 0)
        if t.reason is not Reason.IDLE:
            assert NOW - i.launched_at >= CFG.boot_timeout and t.instance_id not in alive
        if t.reason is Reason.ORPHAN:
            assert i.job_id not in live and i.job_id not in {d.job_id for d in desired}
    assert len({t.instance_id for t in p.terminations}) == len(p.terminations)
    keys = [(x.job_id, x.attempt) for x in p.launches]
    assert len(keys) == len(set(keys)) and set(keys) <= {(d.job_id, d.attempt) for d in desired}
    going = {t.instance_id for t in p.terminations}
    for d in desired:  # launched exactly when no instance of ours still serves it
        tagged = [i for i in observed if i.tags.get(TAG_CLUSTER) == "c1" and (i.job_id, i.attempt) ==
                  (d.job_id, d.attempt)]
        serving = [i for i in tagged if i.state in EXISTING and i.instance_id not in going]
        assert bool(serving) == ((d.job_id, d.attempt) not in set(keys))
        for x in p.launches:
            if (x.job_id, x.attempt) == (d.job_id, d.attempt):
                assert x.generation >= len(tagged)
                assert all(x.generation > i.generation for i in tagged if i.generation is not None)
    for x in p.launches:
        d = next(d for d in desired if (d.job_id, d.attempt) == (x.job_id, x.attempt))
        on_demand = d.market is Market.ON_DEMAND or (d.market is Market.AUTO and d.preemptions >= 2)
        assert x.market is (Market.ON_DEMAND if on_demand else Market.SPOT) and x.cluster == "c1"
    shuffled = [list(x) for x in (desired, observed, agents)]
    for xs in shuffled:
        random.Random(0).shuffle(xs)
    assert plan(*shuffled, CFG, NOW, live_jobs=live) == p
