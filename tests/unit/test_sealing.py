"""Job secrets: sealed to the agent that runs them, locked at rest in the jobs bucket, never in clear on disk."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from incl.agent.runner import at_rest, opened
from incl.agent.workspace import Workspace
from incl.auth.sealing import AgentKey, SealError, Vault, seal
from incl.bus.connection import Bus
from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams
from incl.controller.config import ControllerConfig
from incl.controller.jobs import JobChanges, Jobs
from incl.controller.wiring import records
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.messages import AgentCommand, Assign, Job, JobState
from incl.proto.spec import load_spec

VALUE = "hunter2-7c1d"


def test_a_value_sealed_to_an_agent_opens_with_its_key_only_and_after_a_restart(tmp_path: Path) -> None:
    key = AgentKey.load(tmp_path / "seal.key")
    assert stat.S_IMODE((tmp_path / "seal.key").stat().st_mode) == 0o600
    sealed = seal(key.public, VALUE)
    assert VALUE.encode() not in sealed
    assert AgentKey.load(tmp_path / "seal.key").open(sealed) == VALUE  # the restarted agent's, from its file
    with pytest.raises(SealError):
        AgentKey.load(tmp_path / "other.key").open(sealed)
    assert "private=***" in repr(key)


def test_the_vault_key_is_made_once_and_another_key_cannot_unlock(tmp_path: Path) -> None:
    locked = Vault.load(tmp_path / "v.key").lock(VALUE)
    assert stat.S_IMODE((tmp_path / "v.key").stat().st_mode) == 0o600
    assert VALUE.encode() not in locked and Vault.load(tmp_path / "v.key").unlock(locked) == VALUE
    with pytest.raises(SealError):
        Vault.load(tmp_path / "w.key").unlock(locked)


def test_assign_msgpack_is_private_and_holds_the_sealed_form_even_from_an_older_controller(tmp_path: Path) -> None:
    key = AgentKey.load(tmp_path / "seal.key")
    old = Assign(job_id="j1", attempt=1, spec=load_spec({"run": "x", "secrets": {"TOKEN": VALUE}}))
    kept = at_rest(old, key)  # an older controller's clear value, sealed to this agent's own key
    ws = Workspace(tmp_path, "j1", 1)
    ws.assignment.parent.mkdir(parents=True)
    ws.assignment.write_bytes(b"left by an older agent")
    ws.assignment.chmod(0o644)
    ws.write_assignment(encode(kept))
    assert stat.S_IMODE(ws.assignment.stat().st_mode) == 0o600
    data = ws.assignment.read_bytes()
    assert VALUE.encode() not in data
    assert opened(Decoder(Assign).decode(data), key) == ({"TOKEN": VALUE}, None)
    assert opened(kept, None)[1] is not None  # no key: the attempt fails with this reason, runs nothing


async def test_records_hold_no_clear_value_and_assignments_are_sealed(bus: Bus, tmp_path: Path) -> None:
    await ensure_streams(bus, StreamLimits())
    buckets = await ensure_buckets(bus)
    stores = records(buckets)
    agent = AgentKey.load(tmp_path / "agent.key")
    keys = {"a1": agent.public}
    cfg = ControllerConfig(secrets_key_file=str(tmp_path / "secrets.key"))
    jobs = Jobs(cfg, stores.jobs, bus, shapes=list, wake=asyncio.Event(), changes=JobChanges(),
                agent_key=keys.get)
    # An older controller's record: the value in clear in the spec. It loads, and is locked at its next write.
    spec = load_spec({"run": "x", "secrets": {"TOKEN": VALUE}})
    await stores.jobs.create(Job(id="j-old", spec=spec, user="ann", state=JobState.QUEUED, submitted_at=1.0,
                                 updated_at=1.0))
    new = await jobs.submit(spec, "ann")
    raw, _ = await buckets[subjects.JOBS_BUCKET].get(new.id) or (b"", 0)
    assert raw and VALUE.encode() not in raw and b"TOKEN" in raw
    assert jobs.view(new).spec.secrets == {"TOKEN": "<secret>"} and jobs.view(new).locked_secrets is None
    for job_id in (new.id, "j-old"):
        await jobs.dispatch(job_id, "a1")
        raw, _ = await buckets[subjects.JOBS_BUCKET].get(job_id) or (b"", 0)
        assert VALUE.encode() not in raw, job_id
    pulled = await bus.pull(subjects.ASSIGN_STREAM, subjects.assign("a1"), "t1", ack_wait=5)
    got = [d.data for d in await pulled.fetch(10, timeout=1.0)]
    assert len(got) == 2 and all(VALUE.encode() not in data for data in got)
    for data in got:
        cmd = Decoder(AgentCommand).decode(data)
        assert isinstance(cmd, Assign) and opened(cmd, agent) == ({"TOKEN": VALUE}, None)


async def test_a_job_with_secrets_waits_for_an_agent_with_a_key(bus: Bus, tmp_path: Path) -> None:
    await ensure_streams(bus, StreamLimits())
    stores = records(await ensure_buckets(bus))
    jobs = Jobs(ControllerConfig(secrets_key_file=str(tmp_path / "k")), stores.jobs, bus, shapes=list,
                wake=asyncio.Event(), changes=JobChanges())
    job = await jobs.submit(load_spec({"run": "x", "secrets": {"TOKEN": VALUE}}), "ann")
    await jobs.dispatch(job.id, "old-agent")
    assert jobs.records.require(job.id).state is JobState.QUEUED
    assert "can receive secrets" in (jobs.view(jobs.records.require(job.id)).reason or "")
