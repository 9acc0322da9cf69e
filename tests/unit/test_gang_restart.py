"""A controller that died after every rank of a gang was ready, before its GangStart left: the next controller's
periodic resend starts the gang (each not-started rank gets GangStart with the full environment), once."""

from __future__ import annotations

import asyncio
import time

from incl.bus.connection import Bus
from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams
from incl.controller import gang
from incl.controller.config import ControllerConfig
from incl.controller.jobs import JobChanges, Jobs
from incl.controller.wiring import records
from incl.proto import subjects
from incl.proto.codec import Decoder
from incl.proto.messages import AgentCommand, AgentInfo, GangStart, Job, JobState, Resources
from incl.proto.spec import load_spec


async def test_a_ready_gang_left_unstarted_is_started_by_the_resend(bus: Bus) -> None:
    await ensure_streams(bus, StreamLimits())
    stores = records(await ensure_buckets(bus))
    job = Job(id="j1", spec=load_spec({"run": "x", "resources": {"nodes": 2, "cpus": 1}}), user="ann",
              state=JobState.QUEUED, submitted_at=1.0, updated_at=1.0)
    infos = [AgentInfo(agent_id=f"a{k}", hostname="h", capacity=Resources(cpus=2, memory=2**30)) for k in range(2)]
    job = gang.assign(job, infos, now=2.0)
    job = gang.ready(gang.ready(job, 1, "a0", 29500, now=3.0), 1, "a1", None, now=3.0)
    await stores.jobs.create(job)  # as the dead controller left it: every rank ready, no GangStart sent
    jobs = Jobs(ControllerConfig(), stores.jobs, bus, shapes=list, wake=asyncio.Event(), changes=JobChanges())
    await jobs.resend_stale_assignments(older_than=time.time())
    await jobs.resend_stale_assignments(older_than=time.time() - 60)  # not again within the resend interval
    decoder: Decoder[AgentCommand] = Decoder(AgentCommand)
    for k in range(2):
        pulled = await bus.pull(subjects.ASSIGN_STREAM, subjects.assign(f"a{k}"), f"t{k}", ack_wait=5)
        got = [decoder.decode(d.data) for d in await pulled.fetch(10, timeout=1.0)]
        starts = [c for c in got if isinstance(c, GangStart)]
        assert len(starts) == 1, got
        assert starts[0].env["NODE_RANK"] == str(k) and starts[0].env["MASTER_PORT"] == "29500"
        assert starts[0].env["NNODES"] == "2"
