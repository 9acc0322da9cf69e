"""A new job's id is one no job has: ids are 32 random bits, so among 100,000 jobs one draw repeats an id about
once (the one-hour soak of issue 16 met two), and a submit whose idempotency key was mapped to a taken id answered
with that other job, perhaps another user's, and its own job was never made."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import chain, count
from pathlib import Path

import pytest

from incl.bus.connection import Bus
from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams
from incl.controller import jobs as jobs_mod
from incl.controller.config import ControllerConfig
from incl.controller.jobs import JobChanges, Jobs
from incl.controller.wiring import records
from incl.proto import subjects
from incl.proto.spec import load_spec


async def test_a_submit_that_draws_a_taken_id_makes_its_own_job(bus: Bus, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    await ensure_streams(bus, StreamLimits())
    buckets = await ensure_buckets(bus)
    stores = records(buckets)
    jobs = Jobs(ControllerConfig(secrets_key_file=str(tmp_path / "k")), stores.jobs, bus, shapes=list,
                wake=asyncio.Event(), changes=JobChanges(), submits=buckets[subjects.SUBMITS_BUCKET])
    ann = await jobs.submit(load_spec({"run": "train"}), "ann", key="ann-1")
    draws: Iterator[str] = chain([ann.id, ann.id, "j-0000beef"], (f"j-{n:08x}" for n in count(1)))
    monkeypatch.setattr(jobs_mod, "new_job_id", lambda: next(draws))
    bob = await jobs.submit(load_spec({"run": "eval"}), "bob", key="bob-1")
    assert (bob.id, bob.user, bob.spec.run) == ("j-0000beef", "bob", "eval")
    assert jobs.records.require(ann.id).user == "ann"
    again = await jobs.submit(load_spec({"run": "eval"}), "bob", key="bob-1")  # bob's retry: his job, once
    assert again.id == bob.id and len(jobs.records) == 2
