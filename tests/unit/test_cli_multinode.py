"""What the CLI shows of a multi-node job: every rank of every attempt in `incl show`, logs interleaved with a
`[rank K]` prefix (or one rank's, bare), metrics per rank with rank 0's first, and the other ranks' outputs under
rank-K/. A single-node job looks as it always did."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from incl.artifacts import StoreConfig, open_store, push_tree
from incl.artifacts.store import ArtifactStore
from incl.cli.files import output_files, pull_outputs, rank_trees
from incl.cli.jobs import print_job
from incl.cli.logs import LogWriter, RankedPoint, metric_series, metrics_json, multi_node
from incl.cli.output import UNBOUNDED
from incl.proto.messages import (
    Attempt,
    GetJobReply,
    Job,
    JobState,
    LogBatch,
    LogLine,
    MetricPoint,
    Node,
    Stopping,
    Stream,
    TreeRef,
)
from incl.proto.spec import load_spec

S = JobState
WHY = "rank 1 (a2): exit code 3: CUDA error: an illegal memory access"


def job(attempts: list[Attempt], *, nodes: int = 2, ranks: object = 0, state: S = S.FAILED) -> Job:
    spec = load_spec({"run": "torchrun train.py", "resources": {"nodes": nodes}, "outputs": {"ranks": ranks}})
    return Job(id="j-1", spec=spec, user="u", state=state, submitted_at=0, updated_at=0, attempts=attempts)


def node(rank: int, st: S, **kw: object) -> Node:
    return Node(rank=rank, agent_id=f"a{rank + 1}", state=st, instance_id=f"i-{rank + 1}", instance_type="p5.48xlarge",
                market="spot", started_at=10.0, ended_at=20.0, **kw)  # type: ignore[arg-type]


def gang_attempt(number: int = 1, **kw: object) -> Attempt:
    nodes = [node(0, S.CANCELLED, exit_code=143, reason="stopped: rank 1 failed"),
             node(1, S.FAILED, exit_code=3, reason="exit code 3: CUDA error: an illegal memory access")]
    return Attempt(number=number, agent_id="a1", state=S.FAILED, assigned_at=5.0, instance_id="i-1",
                   instance_type="p5.48xlarge", market="spot", started_at=10.0, ended_at=20.0, exit_code=3,
                   reason=WHY, nodes=nodes, stopping=Stopping(kind="failed", rank=1, reason=WHY, exit_code=3),
                   **kw)  # type: ignore[arg-type]


def show(j: Job) -> list[str]:
    buf = io.StringIO()
    print_job(GetJobReply(job=j), Console(file=buf, width=UNBOUNDED, color_system=None))
    return [line.rstrip() for line in buf.getvalue().splitlines()]


def words(text: str) -> str:
    return " ".join(text.split())


def test_show_lists_every_rank_under_its_attempt_and_the_rank_that_stopped_it() -> None:
    lines = show(job([gang_attempt()]))
    at = next(i for i, line in enumerate(lines) if line.lstrip().startswith("1 "))
    attempt, rank0, rank1 = lines[at:at + 3]
    assert attempt.split()[:3] == ["1", "2", "nodes"] and attempt.endswith(f"stopped: {WHY}")
    assert rank0.split()[:7] == ["rank", "0", "a1", "i-1", "(p5.48xlarge)", "spot", "CANCELLED"]
    assert words(rank0).endswith("10s 143 stopped: rank 1 failed")
    assert rank1.split()[:7] == ["rank", "1", "a2", "i-2", "(p5.48xlarge)", "spot", "FAILED"]
    assert words(rank1).endswith("10s 3 exit code 3: CUDA error: an illegal memory access")


def test_show_says_an_attempt_is_stopping_while_its_ranks_still_run() -> None:
    running = Attempt(number=1, agent_id="a1", state=S.RUNNING, assigned_at=5.0, nodes=[
        node(0, S.RUNNING), node(1, S.FAILED, exit_code=3, reason="exit code 3")],
        stopping=Stopping(kind="failed", rank=1, reason="rank 1 (a2): exit code 3", exit_code=3))
    (attempt,) = [line for line in show(job([running], state=S.RUNNING)) if line.lstrip().startswith("1 ")]
    assert attempt.endswith("stopping: rank 1 (a2): exit code 3")


def test_show_of_a_single_node_job_has_no_rank_rows() -> None:
    one = Attempt(number=1, agent_id="a1", state=S.FAILED, assigned_at=5.0, exit_code=1, reason="exit code 1")
    lines = show(job([one], nodes=1))
    assert not any("rank" in line for line in lines)
    assert next(line for line in lines if line.lstrip().startswith("1 ")).split()[:3] == ["1", "a1", "FAILED"]


def line(data: str, *, stream: Stream = Stream.STDOUT, partial: bool = False) -> LogLine:
    return LogLine(ts=0.0, stream=stream, data=data.encode(), partial=partial)


def batch(rank: int, *lines: LogLine, attempt: int = 1) -> LogBatch:
    return LogBatch(job_id="j-1", attempt=attempt, seq=0, rank=rank, lines=list(lines))


BATCHES = [batch(0, line("loading")), batch(1, line("loading"), line("step 1 on 1")),
           batch(0, line("step 1 on 0"), line("saved", stream=Stream.SYSTEM)), batch(1, line("oops", partial=True)),
           batch(0, line("step 2 on 0")), batch(1, line(" and more"))]


def write(batches: list[LogBatch], **kw: object) -> tuple[str, str]:
    out, err = io.BytesIO(), io.StringIO()
    writer = LogWriter(out, err, **kw)  # type: ignore[arg-type]
    for b in batches:
        writer.write(b)
    return out.getvalue().decode(), err.getvalue()


def test_logs_of_several_ranks_are_interleaved_in_stream_order_with_a_rank_prefix() -> None:
    out, err = write(BATCHES, ranks=True)
    assert out.splitlines() == ["[rank 0] loading", "[rank 1] loading", "[rank 1] step 1 on 1",
                                "[rank 0] step 1 on 0", "[rank 1] oops", "[rank 0] step 2 on 0",
                                "[rank 1]  and more"]
    assert err == "[rank 0] saved\n"


def test_logs_of_one_rank_are_shown_bare() -> None:
    out, err = write(BATCHES, ranks=True, rank=1)
    assert out.splitlines() == ["loading", "step 1 on 1", "oops and more"]
    assert err == ""


def test_logs_take_the_prefix_from_the_lines_even_when_the_record_has_no_nodes() -> None:
    out, _ = write(BATCHES[:2])
    assert out.splitlines() == ["loading", "[rank 1] loading", "[rank 1] step 1 on 1"]


def test_logs_of_a_single_node_job_are_unchanged_and_attempts_still_filter() -> None:
    batches = [batch(0, line("a", partial=True)), batch(0, line("b")), batch(0, line("c"), attempt=2)]
    out, err = write(batches, timestamps=False)
    assert (out, err) == ("ab\nc\n", "--- attempt 2 ---\n")
    assert write(batches, attempt=2) == ("c\n", "")
    one = job([], nodes=1)
    assert not multi_node(one) and multi_node(job([gang_attempt()])) and multi_node(job([], nodes=2))


def test_logs_with_timestamps_put_the_rank_first() -> None:
    out, _ = write([batch(1, line("x"))], ranks=True, timestamps=True)
    assert out == "[rank 1] 1970-01-01T00:00:00.000000Z x\n"


def point(step: int, **values: float) -> MetricPoint:
    return MetricPoint(ts=float(step), step=step, values=values)


def test_metrics_of_several_ranks_are_named_per_rank_rank_0_first() -> None:
    points = [RankedPoint(1, 1, point(1, loss=2.0)), RankedPoint(1, 0, point(1, loss=3.0, lr=0.1)),
              RankedPoint(1, 1, point(2, loss=1.5)), RankedPoint(1, 0, point(2, loss=2.5))]
    series = metric_series(points)
    assert list(series) == ["loss [rank 0]", "lr [rank 0]", "loss [rank 1]"]
    assert series["loss [rank 1]"] == [(1, 2.0), (2, 1.5)]
    assert [(p["rank"], p["step"]) for p in metrics_json(points)] == [(1, 1), (0, 1), (1, 2), (0, 2)]


def test_metrics_of_one_rank_keep_their_plain_names() -> None:
    series = metric_series([RankedPoint(1, 1, point(1, loss=2.0)), RankedPoint(2, 1, point(2, loss=1.0))])
    assert series == {"loss": [(1, 2.0), (2, 1.0)]}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    async with open_store(f"file://{tmp_path}/store", config=StoreConfig(fsync=False)) as s:
        yield s


async def pushed(store: ArtifactStore, folder: Path, files: dict[str, str]) -> TreeRef:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    p = await push_tree(store, folder)
    return TreeRef(digest=p.digest, files=p.files, bytes=p.bytes)


async def test_outputs_of_every_rank_are_listed_and_downloaded_under_rank_k(store: ArtifactStore,
                                                                            tmp_path: Path) -> None:
    r0 = await pushed(store, tmp_path / "r0", {"model.pt": "zero", "logs/a.txt": "a"})
    r1 = await pushed(store, tmp_path / "r1", {"model.pt": "one"})
    att = Attempt(number=1, agent_id="a1", state=S.SUCCEEDED, assigned_at=0, outputs=r0,
                  nodes=[Node(rank=0, agent_id="a1", state=S.SUCCEEDED, outputs=r0),
                         Node(rank=1, agent_id="a2", state=S.SUCCEEDED, outputs=r1),
                         Node(rank=2, agent_id="a3", state=S.SUCCEEDED)])
    trees = rank_trees(job([att], nodes=3, ranks="all", state=S.SUCCEEDED), att)
    assert trees == [("", r0), ("rank-1/", r1)]
    assert sorted(e.path for e in await output_files(store, trees)) == ["logs/a.txt", "model.pt", "rank-1/model.pt"]
    target = tmp_path / "down"
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    await pull_outputs(store, trees, target, blobs, "j-1")
    assert (target / "model.pt").read_text() == "zero" and (target / "rank-1" / "model.pt").read_text() == "one"


def test_outputs_of_the_chosen_rank_stay_at_the_top_level() -> None:
    r1 = TreeRef(digest="d1")
    att = Attempt(number=1, agent_id="a1", state=S.SUCCEEDED, assigned_at=0, outputs=r1,
                  nodes=[Node(rank=0, agent_id="a1", state=S.SUCCEEDED), Node(rank=1, agent_id="a2",
                                                                              state=S.SUCCEEDED, outputs=r1)])
    assert rank_trees(job([att], ranks=1), att) == [("", r1)]
    single = Attempt(number=1, agent_id="a1", state=S.SUCCEEDED, assigned_at=0, outputs=r1)
    assert rank_trees(job([single], nodes=1), single) == [("", r1)]
