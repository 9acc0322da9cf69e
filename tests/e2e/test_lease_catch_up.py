"""A lone controller paused past its lease leads again on waking; its new term brings the last term's records up
to date from the revision it had seen (`catch_up_within`), instead of reading every record again, and acts on
what was written while it was away."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from conftest import Cluster, wait_for

from incl.bus.connection import Bus
from incl.bus.streams import ensure_buckets
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.messages import Job, JobState
from incl.proto.spec import load_spec


@pytest.mark.timeout(90)
async def test_a_leader_back_after_a_short_lapse_catches_up_and_runs_what_was_queued_meanwhile(
        cluster: Cluster, bus: Bus) -> None:
    only = cluster.start_controller(agent_lost_after=10.0)
    cluster.start_agent("a1")
    first = await cluster.submit("echo before")
    assert (await cluster.wait_done(first.id, timeout=30)).state is JobState.SUCCEEDED
    assert only.proc is not None
    os.kill(only.proc.pid, signal.SIGSTOP)
    now = time.time()  # meanwhile another leader queued a job
    queued = Job(id="j-0000cafe", spec=load_spec({"run": "echo meanwhile"}), user="tester", state=JobState.QUEUED,
                 submitted_at=now, updated_at=now)
    await (await ensure_buckets(bus))[subjects.JOBS_BUCKET].create(queued.id, encode(queued))
    await asyncio.sleep(3.0)  # the pause itself: past leader_ttl - leader_margin (2 s)
    os.kill(only.proc.pid, signal.SIGCONT)
    await wait_for(lambda: only.output().count('"leader_elected"') >= 2, timeout=15, what="a second term")
    assert (await cluster.wait_done(queued.id, timeout=30)).state is JobState.SUCCEEDED
    out = only.output()
    assert "leadership_lost" in out and '"records_caught_up"' in out
    assert out.count('"records_loaded"') == 1  # the first term's only
