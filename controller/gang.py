"""Multi-node attempts (gangs), as pure Job -> Job functions: one attempt, one rank per agent, all or nothing.

    assign       the attempt with a Node per rank (ASSIGNED), each on its own agent
    ready        a rank is prepared; when every rank is, the controller sends GangStart with `start_env`
    running      a rank's process started; the attempt is RUNNING once every rank's has
    node_ended   a rank ended. The first that ended other than by succeeding is why the attempt stops
                 (`Stopping`): every other rank is stopped. Once every rank has ended, the attempt ends as
                 the first cause says (FAILED, LOST, PREEMPTED, CANCELLED), through the single-node
                 transitions in `state`, so retries, preemptions and cancels behave exactly as for one node.

No rank of an attempt outlives it: the attempt (and so the next one) waits for every rank to end, and a rank
whose agent is lost ends with it (the agent's lease stopped its process first).
"""

from __future__ import annotations

from msgspec import structs

from incl.controller import state
from incl.proto.messages import TERMINAL, AgentInfo, Attempt, Job, JobState, Node, Stopping, TreeRef

S = JobState
NODE_ENDED = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST, S.PREEMPTED})
LOCALHOST = "127.0.0.1"


def is_gang(job: Job) -> bool:
    return job.spec.resources.nodes > 1


def live_nodes(attempt: Attempt) -> list[Node]:
    """The ranks that have not ended (they hold their agents' resources)."""
    return [n for n in attempt.nodes if n.state not in NODE_ENDED]


def agents_of(job: Job) -> list[str]:
    """The agents the job's current attempt still occupies: every rank's that has not ended (a single-node
    attempt: its one agent)."""
    cur = job.current
    if cur is None:
        return []
    if cur.nodes:
        return [n.agent_id for n in live_nodes(cur)]
    return [cur.agent_id]


def node_of(job: Job, agent_id: str) -> Node | None:
    cur = job.current
    if cur is None:
        return None
    return next((n for n in cur.nodes if n.agent_id == agent_id), None)


def assign(job: Job, agents: list[AgentInfo], now: float, output_key: str = "") -> Job:
    """A new attempt with rank k on agents[k] (every rank writes to the attempt's output subjects)."""
    job = state.assign(job, agents[0].agent_id, now, agents[0], output_key)
    assert job.current is not None
    nodes = [Node(rank=k, agent_id=a.agent_id, state=S.ASSIGNED, instance_id=a.instance_id,
                  instance_type=a.instance_type, market=a.market, address=a.address)
             for k, a in enumerate(agents)]
    return state.with_attempt(job, structs.replace(job.current, nodes=nodes))


def _node(job: Job, attempt: int, agent_id: str) -> tuple[Attempt, Node]:
    cur = job.current
    if cur is None or cur.number != attempt:
        raise state.IllegalTransition(f"{job.id}: event for attempt {attempt}, current is "
                                      f"{cur.number if cur else None}")
    node = next((n for n in cur.nodes if n.agent_id == agent_id), None)
    if node is None:
        raise state.IllegalTransition(f"{job.id}: agent {agent_id} runs no rank of attempt {attempt}")
    return cur, node


def _replace_node(job: Job, cur: Attempt, node: Node, **job_fields: object) -> Job:
    nodes = [node if n.rank == node.rank else n for n in cur.nodes]
    return state.with_attempt(job, structs.replace(cur, nodes=nodes), **job_fields)


def starting(job: Job, attempt: int, agent_id: str, now: float) -> Job:
    cur, node = _node(job, attempt, agent_id)
    if node.state is not S.ASSIGNED:
        return job
    job = _replace_node(job, cur, structs.replace(node, state=S.STARTING))
    if job.state is S.ASSIGNED:
        job = state.starting(job, attempt, now)
    return job


def ready(job: Job, attempt: int, agent_id: str, port: int | None, now: float) -> Job:
    cur, node = _node(job, attempt, agent_id)
    if node.state in NODE_ENDED:
        raise state.IllegalTransition(f"{job.id}: rank {node.rank} has already ended")
    if node.rank == 0 and (port is None or not 1 <= port <= 65535):
        raise state.IllegalTransition(f"{job.id}: rank 0 named no usable rendezvous port ({port!r})")
    node = structs.replace(node, ready=True, port=port if node.rank == 0 else None,
                           state=S.STARTING if node.state is S.ASSIGNED else node.state)
    job = _replace_node(job, cur, node)
    if job.state is S.ASSIGNED:
        job = state.starting(job, attempt, now)
    return job


def all_ready(job: Job) -> bool:
    cur = job.current
    return bool(cur and cur.nodes and cur.stopping is None and all(n.ready for n in cur.nodes))


def start_env(job: Job) -> dict[str, str]:
    """What every rank's process sees, besides its own rank (the agent adds NODE_RANK and INCL_NODE_RANK):
    the names `torchrun` and DeepSpeed read."""
    cur = job.current
    assert cur is not None and cur.nodes
    ips = [n.address or LOCALHOST for n in cur.nodes]
    port = cur.nodes[0].port
    nodes = len(cur.nodes)
    res = job.spec.resources
    per_node = str(res.gpus) if res.gpus else "1"
    env = {
        "INCL_NUM_NODES": str(nodes), "NNODES": str(nodes), "WORLD_NODES": str(nodes),
        "INCL_NODE_IPS": ",".join(ips),
        "INCL_GPUS_PER_NODE": str(res.gpus),
        "NPROC_PER_NODE": per_node,
        "MASTER_ADDR": ips[0],
    }
    if port is not None:
        env |= {"MASTER_PORT": str(port), "INCL_RDZV_ENDPOINT": f"{ips[0]}:{port}"}
    return env


def running(job: Job, attempt: int, agent_id: str, now: float, started_at: float) -> Job:
    cur, node = _node(job, attempt, agent_id)
    if node.state in NODE_ENDED:
        return job
    job = _replace_node(job, cur, structs.replace(node, state=S.RUNNING, started_at=started_at))
    now_cur = job.current
    assert now_cur is not None
    if job.state is not S.RUNNING and now_cur.stopping is None and all(n.state is S.RUNNING for n in now_cur.nodes):
        job = state.running(job, attempt, now, max(n.started_at or started_at for n in now_cur.nodes))
    return job


def _stop_cause(node: Node, kind: str) -> Stopping:
    return Stopping(kind=kind, rank=node.rank, reason=f"rank {node.rank} ({node.agent_id}): {node.reason}",
                    exit_code=node.exit_code)


def node_ended(job: Job, attempt: int, agent_id: str, now: float, *, to: JobState, exit_code: int | None = None,
               reason: str | None = None, outputs: TreeRef | None = None, tail: list[str] | None = None) -> Job:
    """A rank ended (`to`: SUCCEEDED, FAILED, CANCELLED, LOST or PREEMPTED). The caller stops the live ranks when
    the attempt is `stopping` and still has some; once none is left the attempt ends."""
    cur, node = _node(job, attempt, agent_id)
    if node.state in NODE_ENDED:
        return job  # a repeated report (or the exit of a rank its lost agent ended already)
    node = structs.replace(node, state=to, ended_at=now, exit_code=exit_code, reason=reason or to.value.lower(),
                           outputs=outputs)
    kind = {S.FAILED: "failed", S.LOST: "lost", S.PREEMPTED: "preempted", S.CANCELLED: "cancelled"}.get(to)
    stopping = cur.stopping
    if stopping is None and kind is not None:
        stopping = _stop_cause(node, kind)
    if node.rank == 0 and tail is not None:
        cur = structs.replace(cur, tail=tail)
    job = _replace_node(job, structs.replace(cur, stopping=stopping), node)
    ended = job.current
    assert ended is not None
    if live_nodes(ended):
        return job
    return _end(job, ended, now)


def _end(job: Job, cur: Attempt, now: float) -> Job:
    """Every rank has ended: the attempt ends as its first cause says (or SUCCEEDED)."""
    ended_at = max(n.ended_at or now for n in cur.nodes)
    ranks = job.spec.outputs.ranks
    rank0 = cur.nodes[ranks if isinstance(ranks, int) and ranks < len(cur.nodes) else 0]  # whose outputs it keeps
    stop = cur.stopping
    if stop is None:
        return state.exited(job, cur.number, now, exit_code=0, reason=None, cancelled=False, tail=cur.tail,
                            ended_at=ended_at, outputs=rank0.outputs)
    if stop.kind == "lost":
        return state.lost(job, cur.number, now, stop.reason)
    if stop.kind == "preempted":
        return state.preempt(job, cur.number, now, stop.reason)
    return state.exited(job, cur.number, now, exit_code=stop.exit_code, reason=stop.reason,
                        cancelled=stop.kind == "cancelled", tail=cur.tail, ended_at=ended_at, outputs=rank0.outputs)


def to_stop(before: Job, after: Job) -> list[str]:
    """The agents whose ranks must be stopped now: the attempt just started stopping and they still run."""
    b, a = before.current, after.current
    if a is None or not a.nodes or a.stopping is None or (b is not None and b.number == a.number and b.stopping):
        return []
    if after.state in TERMINAL or (b is not None and b.number != a.number):
        return []
    return [n.agent_id for n in live_nodes(a)]
