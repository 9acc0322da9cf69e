"""Memory holds the jobs not over and a bounded window of ended ones (`ended_jobs_in_memory`, issue 16: a soak grew
14 MiB per 10,000 jobs); every older one still answers, from the jobs bucket: GET, cancel, a repeated submit, the
job-id check, `incl ls` pages, the counts by state, and a new leader's load."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from itertools import chain, count
from pathlib import Path

import pytest
from conftest import wait_for

from incl.bus.connection import Bus
from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams
from incl.controller import jobs as jobs_mod
from incl.controller.config import ControllerConfig
from incl.controller.joblisting import list_page
from incl.controller.jobs import JobChanges, Jobs
from incl.controller.standby import Standby
from incl.controller.wiring import Stores, records
from incl.proto import subjects
from incl.proto.errors import Conflict
from incl.proto.messages import Envelope, GetJobReply, GetJobRequest, Job, JobState
from incl.proto.spec import load_spec

WINDOW = 3


async def listed(stores: Stores, limit: int, between: list[Job] | None = None) -> list[str]:
    """Every job id `incl ls` pages through, `limit` a page (page 1 is followed by the writes `between`)."""
    ids: list[str] = []
    after: str | None = None
    while True:
        chosen, after = await list_page(stores.jobs, lambda _: True, after, limit, 512 * 1024, timeout=5.0)
        ids += [j.id for j in chosen]
        if between:
            for job in between:
                await stores.jobs.put(job)
            between = None
        if after is None:
            return ids


def service(bus: Bus, buckets: dict, stores: Stores, tmp_path: Path) -> Jobs:  # type: ignore[type-arg]
    return Jobs(ControllerConfig(secrets_key_file=str(tmp_path / "k")), stores.jobs, bus, shapes=list,
                wake=asyncio.Event(), changes=JobChanges(), submits=buckets[subjects.SUBMITS_BUCKET])


async def test_ended_jobs_past_the_window_leave_memory_and_still_answer(bus: Bus, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    await ensure_streams(bus, StreamLimits())
    buckets = await ensure_buckets(bus)
    stores = records(buckets, ended_jobs=WINDOW)
    jobs = service(bus, buckets, stores, tmp_path)
    ended = []
    for n in range(12):
        job = await jobs.submit(load_spec({"run": f"step {n}"}), "ann", key=f"ann-{n}")
        await jobs.cancel(job.id)  # queued: CANCELLED at once, over
        ended.append(job.id)
    live = [(await jobs.submit(load_spec({"run": "serve"}), "bob")).id for _ in range(2)]
    assert len(jobs.records) == WINDOW + len(live)
    assert {j.id for j in jobs.live()} == set(live)
    first = ended[0]
    assert jobs.records.get(first) is None  # let go from memory...
    assert (await jobs.records.need(first)).state is JobState.CANCELLED  # ...read from the bucket when asked
    with pytest.raises(Conflict, match="already finished"):
        await jobs.cancel(first)
    again = await jobs.submit(load_spec({"run": "step 0"}), "ann", key="ann-0")  # a retried submit: the old job
    assert again.id == first and len(jobs.records) == WINDOW + len(live)
    draws: Iterator[str] = chain([first, ended[1], "j-0000beef"], (f"j-{n:08x}" for n in count(1)))
    monkeypatch.setattr(jobs_mod, "new_job_id", lambda: next(draws))
    fresh = await jobs.submit(load_spec({"run": "eval"}), "cat", key="cat-1")  # the first two draws are taken
    assert (fresh.id, fresh.user) == ("j-0000beef", "cat")
    assert (await jobs.records.need(first)).user == "ann"
    assert jobs.tally.by_state() == {"CANCELLED": 12, "QUEUED": 3}

    everyone = {*ended, *live, fresh.id}
    assert sorted(await listed(stores, limit=4)) == sorted(everyone)  # each once, old ones from the bucket
    # Jobs written while a listing pages: none that existed is skipped (a changed one may show twice).
    moved = [await jobs.cancel(live[0]), await jobs.records.need(ended[5])]
    seen = await listed(stores, limit=4, between=moved)
    assert set(seen) == everyone and len(seen) <= len(everyone) + len(moved)

    # A new leader (or a standby) loads the store: the same window, the same answers.
    restarted = records(buckets, ended_jobs=WINDOW)
    await restarted.load()
    assert len(restarted.jobs) == WINDOW + 2  # bob's other job and the one cat submitted are not over
    assert restarted.tally.by_state() == {"CANCELLED": 13, "QUEUED": 2}
    assert (await restarted.jobs.need(ended[2])).spec.run == "step 2"
    assert sorted(await listed(restarted, limit=5)) == sorted(everyone)


async def test_a_standby_holds_the_same_window_and_answers_for_what_it_let_go(bus: Bus, tmp_path: Path) -> None:
    """The standby's warm copy (`incl.controller.standby`) is bounded as the leader's is, while it loads and while it
    follows the leader's writes, and a read it answers for a job past its window comes from the bucket."""
    await ensure_streams(bus, StreamLimits())
    buckets = await ensure_buckets(bus)
    leader = service(bus, buckets, records(buckets, ended_jobs=WINDOW), tmp_path)
    ended = []
    for n in range(8):
        ended.append((await leader.submit(load_spec({"run": f"step {n}"}), "ann")).id)
        await leader.cancel(ended[-1])
    live = (await leader.submit(load_spec({"run": "serve"}), "ann")).id
    cfg = ControllerConfig(secrets_key_file=str(tmp_path / "k"), ended_jobs_in_memory=WINDOW)
    standby, handover = Standby(cfg, bus, buckets), asyncio.Event()
    serving = asyncio.create_task(standby.serve(handover))
    try:
        async def ready() -> bool:
            return standby.stores.jobs.get(live) is not None and standby._jobs is not None

        await wait_for(ready, 10, "the standby to serve reads")
        assert len(standby.stores.jobs) == WINDOW + 1
        for n in range(8, 20):  # the leader goes on; the standby follows, still bounded
            ended.append((await leader.submit(load_spec({"run": f"step {n}"}), "ann")).id)
            await leader.cancel(ended[-1])

        async def followed() -> bool:
            return standby.stores.jobs.get(ended[-1]) is not None

        await wait_for(followed, 10, "the standby to follow the leader's writes")
        assert len(standby.stores.jobs) == WINDOW + 1
        assert standby.stores.jobs.get(ended[0]) is None
        reply = await bus.request(subjects.user_api_any("ann", subjects.GET_JOB),
                                  GetJobRequest(meta=Envelope.new("cli:ann"), job_id=ended[0]), GetJobReply, 5.0)
        assert (reply.job.id, reply.job.state, reply.job.spec.run) == (ended[0], JobState.CANCELLED, "step 0")
    finally:
        handover.set()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
