"""The wire contract: what every message looks like to plain msgpack, and that decoders only ever raise ours."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from incl.proto import PROTOCOL_VERSION, errors
from incl.proto import audit as au
from incl.proto import messages as m
from incl.proto import registry as rg
from incl.proto import shares as sh
from incl.proto import status as status_
from incl.proto import studies as st_
from incl.proto.codec import Decoder, encode
from incl.proto.errors import BY_CODE, DecodeError, InclError, VersionMismatch, from_code
from incl.proto.spec import JobSpec
from incl.proto.spec import Resources as SpecResources

# --- samples: one per message class, with the plain structure msgpack sees ---------------------------------

ENV = m.Envelope(request_id="r1", sender="cli@laptop", idempotency_key="k1")
ENV_PLAIN = {"request_id": "r1", "sender": "cli@laptop", "version": PROTOCOL_VERSION, "idempotency_key": "k1",
             "origin": None}

SPEC = JobSpec(
    run="python train.py",
    name="bert",
    env={"LR": "0.1"},
    resources=SpecResources(cpus=4.0, memory=16 * 2**30, gpus=2, gpu_model="A100"),
)
# JobSpec omits defaults on the wire: only what the user set travels.
SPEC_PLAIN = {
    "run": "python train.py",
    "name": "bert",
    "env": {"LR": "0.1"},
    "resources": {"cpus": 4.0, "memory": 16 * 2**30, "gpus": 2, "gpu_model": "A100"},
}

ATTEMPT = m.Attempt(number=1, agent_id="a1", state=m.JobState.RUNNING, assigned_at=10.0, started_at=11.0, tail=["hi"])
ATTEMPT_PLAIN = {
    "number": 1,
    "agent_id": "a1",
    "state": "RUNNING",
    "assigned_at": 10.0,
    "instance_id": None,
    "instance_type": None,
    "market": None,
    "started_at": 11.0,
    "ended_at": None,
    "exit_code": None,
    "reason": None,
    "tail": ["hi"],
    "outputs": None,
    "nodes": [],
    "stopping": None,
    "output_key": "",
    "agent_subjects": False,
}

JOB = m.Job(
    id="j1", spec=SPEC, user="ann", state=m.JobState.RUNNING, submitted_at=1.0, updated_at=2.0, attempts=[ATTEMPT],
    code=m.TreeRef(digest="cd" * 32, files=2, bytes=5),
)
JOB_PLAIN = {
    "id": "j1",
    "spec": SPEC_PLAIN,
    "user": "ann",
    "state": "RUNNING",
    "submitted_at": 1.0,
    "updated_at": 2.0,
    "attempts": [ATTEMPT_PLAIN],
    "cancel_requested": False,
    "reason": None,
    "exit_code": None,
    "code": {"digest": "cd" * 32, "files": 2, "bytes": 5},
    "trial": None,
    "locked_secrets": None,
}

RES = m.Resources(cpus=8.0, memory=64 * 2**30, gpus=8, gpu_model="H100")
RES_PLAIN = {"cpus": 8.0, "memory": 64 * 2**30, "gpus": 8, "gpu_model": "H100"}

INFO = m.AgentInfo(agent_id="a1", hostname="gpu-1", capacity=RES, labels={"zone": "eu"}, version="0.1.0",
                   provider="aws", instance_id="i-0abc", instance_type="p4d.24xlarge", market="spot",
                   zone="us-east-1a", address="10.0.3.7", seal_key=b"k" * 32)
INFO_PLAIN = {
    "agent_id": "a1",
    "hostname": "gpu-1",
    "capacity": RES_PLAIN,
    "provider": "aws",
    "instance_id": "i-0abc",
    "instance_type": "p4d.24xlarge",
    "market": "spot",
    "zone": "us-east-1a",
    "address": "10.0.3.7",
    "labels": {"zone": "eu"},
    "runtimes": ["process"],
    "version": "0.1.0",
    "gpus": [],
    "seal_key": b"k" * 32,
}

REF = m.JobRef(job_id="j1", attempt=2)
REF_PLAIN = ["j1", 2]  # array_like

RECORD = m.AgentRecord(info=INFO, state=m.AgentState.ALIVE, registered_at=1.0, last_seen=2.0)
RECORD_PLAIN = {"info": INFO_PLAIN, "state": "alive", "registered_at": 1.0, "last_seen": 2.0, "instance": ""}


def _msg(cls: type[m.Message], **fields: Any) -> dict[str, Any]:
    return {"type": cls.__name__, **fields}


SAMPLES: list[tuple[m.Message, dict[str, Any]]] = [
    (m.ErrorReply(code="not_found", message="no job j9", field="job_id"),
     _msg(m.ErrorReply, code="not_found", message="no job j9", field="job_id")),
    (m.SubmitRequest(meta=ENV, spec=SPEC, user="ann", code=m.TreeRef(digest="ab" * 32, files=3, bytes=10)),
     _msg(m.SubmitRequest, meta=ENV_PLAIN, spec=SPEC_PLAIN, user="ann",
          code={"digest": "ab" * 32, "files": 3, "bytes": 10})),
    (m.SubmitReply(job=JOB), _msg(m.SubmitReply, job=JOB_PLAIN)),
    (m.ListJobsRequest(meta=ENV, states=[m.JobState.QUEUED, m.JobState.LOST], user="ann"),
     _msg(m.ListJobsRequest, meta=ENV_PLAIN, states=["QUEUED", "LOST"], user="ann", study=None, after=None,
             limit=None)),
    (m.ListJobsReply(jobs=[JOB], gpu_util={"j1": 55.0}, next="c1"),
     _msg(m.ListJobsReply, jobs=[JOB_PLAIN], gpu_util={"j1": 55.0}, next="c1")),
    (m.GetJobRequest(meta=ENV, job_id="j1"), _msg(m.GetJobRequest, meta=ENV_PLAIN, job_id="j1", why_no_logs=False)),
    (m.GetJobReply(job=JOB), _msg(m.GetJobReply, job=JOB_PLAIN, gpu_util=None, gpu_idle_since=None,
                                  logs_expired=None)),
    (m.CancelRequest(meta=ENV, job_id="j1"), _msg(m.CancelRequest, meta=ENV_PLAIN, job_id="j1")),
    (m.CancelReply(job=JOB), _msg(m.CancelReply, job=JOB_PLAIN)),
    (m.ListAgentsRequest(meta=ENV), _msg(m.ListAgentsRequest, meta=ENV_PLAIN, after=None, limit=None)),
    (m.ListAgentsReply(agents=[m.AgentView(record=RECORD, running=[REF], allocated=RES)]),
     _msg(m.ListAgentsReply, agents=[{"record": RECORD_PLAIN, "running": [REF_PLAIN], "allocated": RES_PLAIN,
                                      "telemetry": None}], next=None)),
    (m.QuotaRequest(meta=ENV), _msg(m.QuotaRequest, meta=ENV_PLAIN)),
    (m.QuotaReply(lines=[m.QuotaLine(kind="team", name="vision", used=16, limit=16)]),
     _msg(m.QuotaReply, lines=[{"kind": "team", "name": "vision", "used": 16, "limit": 16}])),
    (m.PingRequest(meta=ENV), _msg(m.PingRequest, meta=ENV_PLAIN)),
    (m.ListDeadLettersRequest(meta=ENV, limit=5), _msg(m.ListDeadLettersRequest, meta=ENV_PLAIN, limit=5)),
    (m.ListDeadLettersReply(letters=[m.DeadLetterView(seq=7, letter=m.DeadLetter(
        source="controller-events", subject="incl.events.a1", error="undecodable", data=b"\xc1", size=1, ts=2.0))],
        total=1),
     _msg(m.ListDeadLettersReply, letters=[{"seq": 7, "letter": {
         "source": "controller-events", "subject": "incl.events.a1", "error": "undecodable", "data": b"\xc1",
         "size": 1, "ts": 2.0}}], total=1)),
    (m.PingReply(controller_id="c1", store_url="s3://b/p"),
     _msg(m.PingReply, controller_id="c1", version=PROTOCOL_VERSION, store_url="s3://b/p")),
    (m.RegisterRequest(meta=ENV, info=INFO, running=[REF]),
     _msg(m.RegisterRequest, meta=ENV_PLAIN, info=INFO_PLAIN, running=[REF_PLAIN], instance="",
          previous_instance="")),
    (m.RegisterReply(heartbeat_interval=5.0, stop=[REF], lease=m.Lease(duration=13.0, grace=5.0)),
     _msg(m.RegisterReply, heartbeat_interval=5.0, stop=[REF_PLAIN], store_url=None,
          lease={"duration": 13.0, "grace": 5.0})),
    (m.HeartbeatRequest(meta=ENV, agent_id="a1", running=[REF], instance="p1", ended=[REF]),
     _msg(m.HeartbeatRequest, meta=ENV_PLAIN, agent_id="a1", running=[REF_PLAIN], telemetry=None, instance="p1",
          ended=[REF_PLAIN])),
    (m.HeartbeatReply(heartbeat_interval=5.0, registered=False, stop=[REF]),
     _msg(m.HeartbeatReply, heartbeat_interval=5.0, registered=False, stop=[REF_PLAIN], lease=None,
          superseded=False)),
    (m.AssignmentRequest(meta=ENV, job_id="j1", attempt=2, agent_id="a1"),
     _msg(m.AssignmentRequest, meta=ENV_PLAIN, job_id="j1", attempt=2, agent_id="a1")),
    (m.AssignmentReply(current=True), _msg(m.AssignmentReply, current=True, cancel_requested=False)),
    (m.Assign(job_id="j1", attempt=2, spec=SPEC, env={"INCL_JOB_ID": "j1"}, sealed={"TOKEN": b"\x00sealed"}),
     _msg(m.Assign, job_id="j1", attempt=2, spec=SPEC_PLAIN, env={"INCL_JOB_ID": "j1"}, code=None,
          gang=None, sealed={"TOKEN": b"\x00sealed"}, owner="", output_key="")),
    (m.CancelJob(job_id="j1", attempt=2, grace=10.0), _msg(m.CancelJob, job_id="j1", attempt=2, grace=10.0)),
    (m.GangStart(job_id="j1", attempt=2, env={"MASTER_PORT": "29500"}),
     _msg(m.GangStart, job_id="j1", attempt=2, env={"MASTER_PORT": "29500"})),
    (m.JobReady(job_id="j1", attempt=2, agent_id="a1", ts=3.0, rank=0, port=29500),
     _msg(m.JobReady, job_id="j1", attempt=2, agent_id="a1", ts=3.0, rank=0, port=29500)),
    (m.JobStarting(job_id="j1", attempt=2, agent_id="a1", ts=3.5),
     _msg(m.JobStarting, job_id="j1", attempt=2, agent_id="a1", ts=3.5)),
    (m.JobRunning(job_id="j1", attempt=2, agent_id="a1", ts=3.5, pid=4242),
     _msg(m.JobRunning, job_id="j1", attempt=2, agent_id="a1", ts=3.5, pid=4242)),
    (m.JobExited(job_id="j1", attempt=2, agent_id="a1", ts=3.5, exit_code=None, signal=9, reason="oom",
                 cancelled=True, tail=["Killed"]),
     _msg(m.JobExited, job_id="j1", attempt=2, agent_id="a1", ts=3.5, exit_code=None, signal=9, reason="oom",
          cancelled=True, preempted=False, fenced=False, tail=["Killed"], outputs=None)),
    (m.AgentInterrupted(agent_id="a1", instance_id="i-0abc", action="terminate", deadline=120.0, ts=1.0),
     _msg(m.AgentInterrupted, agent_id="a1", instance_id="i-0abc", action="terminate", deadline=120.0, ts=1.0)),
    (m.LogBatch(job_id="j1", attempt=2, seq=7, lines=[
        m.LogLine(ts=1.0, stream=m.Stream.STDOUT, data=b"epoch 1\n"),
        m.LogLine(ts=1.5, stream=m.Stream.STDERR, data=b"\xff\xfenot utf-8"),
     ]),
     _msg(m.LogBatch, job_id="j1", attempt=2, seq=7,
          lines=[[1.0, 1, b"epoch 1\n", False], [1.5, 2, b"\xff\xfenot utf-8", False]],
          rank=0, stdout_total=0, stderr_total=0)),
    (m.MetricBatch(job_id="j1", attempt=2, seq=8, points=[
        m.MetricPoint(ts=1.0, step=10, values={"loss": 0.25}),
        m.MetricPoint(ts=2.0, step=None, values={"acc": 0.5, "lr": 1e-4}),
     ]),
     _msg(m.MetricBatch, job_id="j1", attempt=2, seq=8,
          points=[[1.0, 10, {"loss": 0.25}], [2.0, None, {"acc": 0.5, "lr": 1e-4}]], rank=0)),
    (m.MetricSummary(job_id="j1", attempt=2, batches=9, series=[
        m.SeriesSummary(name="loss", points=1000, index=[0, 999], ts=[1.0, 2.0], steps=[10, None], values=[0.5, 0.1]),
     ]),
     _msg(m.MetricSummary, job_id="j1", attempt=2, batches=9,
          series=[["loss", 1000, [0, 999], [1.0, 2.0], [10, None], [0.5, 0.1]]], rank=0)),
]  # fmt: skip


def test_agents_write_metric_points_as_columns_which_read_as_the_points() -> None:
    """The form agents write: runs of columns, a new run where the metrics or the use of a step change."""
    points = [m.MetricPoint(ts=1.0, step=10, values={"loss": 0.25}),
              m.MetricPoint(ts=1.5, step=11, values={"loss": 0.2}),
              m.MetricPoint(ts=2.0, step=None, values={"acc": 0.5, "lr": 1e-4})]
    batch = m.MetricBatch(job_id="j1", attempt=2, seq=8, points=m.MetricColumns.of(points))
    assert msgpack.unpackb(encode(batch)) == _msg(m.MetricBatch, job_id="j1", attempt=2, seq=8, rank=0, points={
        "runs": [[["loss"], [1.0, 1.5], [10, 11], [[0.25, 0.2]]], [["acc", "lr"], [2.0], None, [[0.5], [1e-4]]]]})
    read = Decoder(m.MetricBatch).decode(encode(batch))
    assert read.points == points and list(read.points) == points and len(read.points) == 3
    assert read.points[-1] == points[-1] and read.points[1:] == points[1:]

STUDY = st_.Study(id="s1", spec=SPEC, user="ann", state=st_.StudyState.RUNNING, created_at=1.0, updated_at=2.0, seed=7)
STUDY_PLAIN = {"id": "s1", "spec": SPEC_PLAIN, "user": "ann", "state": "RUNNING", "created_at": 1.0,
               "updated_at": 2.0, "seed": 7, "code": None, "reason": None, "ended_at": None, "cancel_running": False,
               "journal": "", "locked_secrets": None}
SUMMARY = st_.StudySummary(study=STUDY, counts={"COMPLETE": 2}, best_value=0.5, best_trial=1, gpu_hours=0.25)
SUMMARY_PLAIN = {"study": STUDY_PLAIN, "counts": {"COMPLETE": 2}, "best_value": 0.5, "best_trial": 1,
                 "gpu_hours": 0.25}
TRIAL = st_.TrialView(number=1, state=st_.TrialState.COMPLETE, params={"LR": 0.1, "OPT": "sgd"}, value=0.5,
                      job_id="j1", job_state=m.JobState.SUCCEEDED, started_at=1.0, ended_at=2.0, last_step=3, steps=4)
TRIAL_PLAIN = {"number": 1, "state": "COMPLETE", "params": {"LR": 0.1, "OPT": "sgd"}, "value": 0.5, "job_id": "j1",
               "job_state": "SUCCEEDED", "started_at": 1.0, "ended_at": 2.0, "reason": None, "last_step": 3,
               "steps": 4}
SAMPLES += [
    (st_.SubmitStudyRequest(meta=ENV, spec=SPEC, user="ann"),
     _msg(st_.SubmitStudyRequest, meta=ENV_PLAIN, spec=SPEC_PLAIN, user="ann", code=None)),
    (st_.SubmitStudyReply(study=STUDY), _msg(st_.SubmitStudyReply, study=STUDY_PLAIN)),
    (st_.ListStudiesRequest(meta=ENV, user="ann"),
     _msg(st_.ListStudiesRequest, meta=ENV_PLAIN, user="ann", after=None, limit=None)),
    (st_.ListStudiesReply(studies=[SUMMARY], next="c"), _msg(st_.ListStudiesReply, studies=[SUMMARY_PLAIN], next="c")),
    (st_.GetStudyRequest(meta=ENV, study_id="s1"), _msg(st_.GetStudyRequest, meta=ENV_PLAIN, study_id="s1",
                                                        brief=False)),
    (st_.GetStudyReply(summary=SUMMARY, trials=[TRIAL], best_so_far=[0.5], importances={"LR": 1.0}),
     _msg(st_.GetStudyReply, summary=SUMMARY_PLAIN, trials=[TRIAL_PLAIN], best_so_far=[0.5],
          importances={"LR": 1.0})),
    (st_.StopStudyRequest(meta=ENV, study_id="s1", cancel=True),
     _msg(st_.StopStudyRequest, meta=ENV_PLAIN, study_id="s1", cancel=True)),
    (st_.StopStudyReply(study=STUDY), _msg(st_.StopStudyReply, study=STUDY_PLAIN)),
]

STREAM = status_.StreamStatus(name="INCL_LOGS", replicas=3, messages=5, bytes=900, leader="n1",
                              followers=[status_.Replica(name="n2"), status_.Replica(name="n3", current=False, lag=4)])
STREAM_PLAIN = {"name": "INCL_LOGS", "replicas": 3, "messages": 5, "bytes": 900, "leader": "n1",
                "followers": [{"name": "n2", "current": True, "lag": 0}, {"name": "n3", "current": False, "lag": 4}]}
LETTER = m.DeadLetterView(seq=7, letter=m.DeadLetter(source="controller-events", subject="incl.events.a1",
                                                     error="bad", data=b"x", size=1, ts=1.0))
LETTER_PLAIN = {"seq": 7, "letter": {"source": "controller-events", "subject": "incl.events.a1", "error": "bad",
                                     "data": b"x", "size": 1, "ts": 1.0}}
SAMPLES += [
    (status_.StatusRequest(meta=ENV, errors=3), _msg(status_.StatusRequest, meta=ENV_PLAIN, errors=3)),
    (status_.StatusReply(controller_id="c1", started_at=1.0, jobs={"QUEUED": 2}, agents={"alive": 1},
                         streams=[STREAM], dead_letters=1, errors=[LETTER],
                         controllers=[status_.ControllerMember(controller_id="c1", started_at=1.0, leader=True),
                                      status_.ControllerMember(controller_id="c2", started_at=2.0)]),
     _msg(status_.StatusReply, controller_id="c1", started_at=1.0, jobs={"QUEUED": 2}, agents={"alive": 1},
          streams=[STREAM_PLAIN], dead_letters=1, errors=[LETTER_PLAIN],
          controllers=[{"controller_id": "c1", "started_at": 1.0, "leader": True},
                       {"controller_id": "c2", "started_at": 2.0, "leader": False}])),
]

TREE = m.TreeRef(digest="ef" * 32, files=1, bytes=5)
TREE_PLAIN = {"digest": "ef" * 32, "files": 1, "bytes": 5}
LINEAGE = rg.Lineage(job_id="j1", job_name="bert", job_state=m.JobState.SUCCEEDED, attempt=1, user="ann",
                     metrics={"loss": 0.25})
LINEAGE_PLAIN = {"job_id": "j1", "job_name": "bert", "job_state": "SUCCEEDED", "attempt": 1, "user": "ann",
                 "code": None, "image": None, "env": {}, "params": {}, "study_id": None, "metrics": {"loss": 0.25}}
VERSION = rg.ModelVersion(name="bert", version=2, tree=TREE, lineage=LINEAGE, registered_by="bob",
                          registered_at=3.0, paths=["model.pt"])
VERSION_PLAIN = {"name": "bert", "version": 2, "tree": TREE_PLAIN, "lineage": LINEAGE_PLAIN, "registered_by": "bob",
                 "registered_at": 3.0, "paths": ["model.pt"], "note": None}
ALIAS = rg.ModelAlias(name="bert", alias="prod", version=2, set_by="bob", set_at=4.0)
ALIAS_PLAIN = {"name": "bert", "alias": "prod", "version": 2, "set_by": "bob", "set_at": 4.0}
SAMPLES += [
    (rg.RegisterModelRequest(meta=ENV, name="bert", job_id="j1", paths=["model.pt"], alias="prod"),
     _msg(rg.RegisterModelRequest, meta=ENV_PLAIN, name="bert", job_id="j1", paths=["model.pt"], alias="prod",
          note=None)),
    (rg.RegisterModelReply(version=VERSION), _msg(rg.RegisterModelReply, version=VERSION_PLAIN)),
    (rg.ListModelsRequest(meta=ENV), _msg(rg.ListModelsRequest, meta=ENV_PLAIN)),
    (rg.ListModelsReply(models=[rg.ModelSummary(name="bert", versions=2, latest=VERSION, aliases={"prod": 2})]),
     _msg(rg.ListModelsReply, models=[{"name": "bert", "versions": 2, "latest": VERSION_PLAIN,
                                       "aliases": {"prod": 2}}])),
    (rg.ListVersionsRequest(meta=ENV, job_id="j1"),
     _msg(rg.ListVersionsRequest, meta=ENV_PLAIN, name=None, job_id="j1")),
    (rg.ListVersionsReply(versions=[VERSION]), _msg(rg.ListVersionsReply, versions=[VERSION_PLAIN])),
    (rg.GetModelRequest(meta=ENV, name="bert", alias="prod"),
     _msg(rg.GetModelRequest, meta=ENV_PLAIN, name="bert", version=None, alias="prod")),
    (rg.GetModelReply(version=VERSION, versions=[1, 2], aliases={"prod": 2}),
     _msg(rg.GetModelReply, version=VERSION_PLAIN, versions=[1, 2], aliases={"prod": 2})),
    (rg.AliasModelRequest(meta=ENV, name="bert", version=2, alias="prod"),
     _msg(rg.AliasModelRequest, meta=ENV_PLAIN, name="bert", version=2, alias="prod")),
    (rg.AliasModelReply(alias=ALIAS, previous=1), _msg(rg.AliasModelReply, alias=ALIAS_PLAIN, previous=1)),
]

# The audit trail: a request that says where it comes from, and an entry.
ORIGIN_ENV = m.Envelope(request_id="r2", sender="cli:ann", origin=m.Origin(host="laptop", address="10.0.0.7"))
ORIGIN_ENV_PLAIN = {"request_id": "r2", "sender": "cli:ann", "version": PROTOCOL_VERSION, "idempotency_key": None,
                    "origin": {"host": "laptop", "address": "10.0.0.7"}}
ENTRY = au.AuditEntry(id="e1", at=5.0, who=au.Actor(kind="user", name="ann"), verb="jobs.cancel",
                      outcome=au.Outcome.REFUSED, target="j1", reason="not allowed", detail={"name": "bert"},
                      origin=ORIGIN_ENV.origin, request_id="r2")
ENTRY_PLAIN = {"id": "e1", "at": 5.0, "who": {"kind": "user", "name": "ann"}, "verb": "jobs.cancel",
               "outcome": "refused", "target": "j1", "reason": "not allowed", "detail": {"name": "bert"},
               "origin": {"host": "laptop", "address": "10.0.0.7"}, "request_id": "r2"}
SAMPLES += [
    (au.AuditRequest(meta=ORIGIN_ENV, user="ann", since=1.0, verb="submit", limit=10, cursor=7),
     _msg(au.AuditRequest, meta=ORIGIN_ENV_PLAIN, user="ann", since=1.0, verb="submit", limit=10, cursor=7)),
    (au.AuditReply(entries=[ENTRY], next=3), _msg(au.AuditReply, entries=[ENTRY_PLAIN], next=3)),
    (au.UserChangedRequest(meta=ENV, name="carol", teams=["nlp"], admin=True),
     _msg(au.UserChangedRequest, meta=ENV_PLAIN, name="carol", teams=["nlp"], admin=True)),
    (au.UserChangedReply(), _msg(au.UserChangedReply)),
]


def test_an_envelope_from_before_the_audit_trail_still_decodes() -> None:
    """A client that sends no origin (older than the audit trail) is understood."""
    old = {k: v for k, v in ENV_PLAIN.items() if k != "origin"}
    assert Decoder(m.PingRequest).decode(msgpack.packb(_msg(m.PingRequest, meta=old))) == m.PingRequest(meta=ENV)

# Share links (proto/shares.py).
TARGET, TARGET_PLAIN = sh.ShareTarget(job_id="j1", path="ckpt"), {"job_id": "j1", "path": "ckpt", "model": None,
                                                                  "version": None}
SHARE = sh.Share(id="sh-0123456789abcdef", kind="folder", target=TARGET, trees=[sh.SharedTree(folder="",
                 digest="ab" * 32)], created_by="ann", created_at=1.0, expires_at=2.0, files=3, bytes=40)
SHARE_PLAIN = {"id": "sh-0123456789abcdef", "kind": "folder", "target": TARGET_PLAIN,
               "trees": [{"folder": "", "digest": "ab" * 32}], "created_by": "ann", "created_at": 1.0,
               "expires_at": 2.0, "files": 3, "bytes": 40, "revoked": False, "revoked_at": None, "revoked_by": None}
SAMPLES += [
    (sh.CreateShareRequest(meta=ENV, target=TARGET, expires_in=60.0),
     _msg(sh.CreateShareRequest, meta=ENV_PLAIN, target=TARGET_PLAIN, expires_in=60.0)),
    (sh.CreateShareReply(share=SHARE, token="sh-0123456789abcdef.sig"),
     _msg(sh.CreateShareReply, share=SHARE_PLAIN, token="sh-0123456789abcdef.sig")),
    (sh.ListSharesRequest(meta=ENV), _msg(sh.ListSharesRequest, meta=ENV_PLAIN, everyone=False)),
    (sh.ListSharesReply(shares=[SHARE]), _msg(sh.ListSharesReply, shares=[SHARE_PLAIN])),
    (sh.RevokeShareRequest(meta=ENV, share_id=SHARE.id), _msg(sh.RevokeShareRequest, meta=ENV_PLAIN,
                                                               share_id=SHARE.id)),
    (sh.RevokeShareReply(share=SHARE), _msg(sh.RevokeShareReply, share=SHARE_PLAIN)),
    (sh.ResolveShareRequest(meta=ENV, token="t"), _msg(sh.ResolveShareRequest, meta=ENV_PLAIN, token="t")),
    (sh.ResolveShareReply(state="expired", ended_at=2.0),
     _msg(sh.ResolveShareReply, state="expired", share=None, ended_at=2.0)),
]


def _leaves(cls: type) -> list[type]:
    subs = cls.__subclasses__()
    return [cls] if not subs else [leaf for sub in subs for leaf in _leaves(sub)]


MESSAGE_CLASSES = _leaves(m.Message)
REQUEST_CLASSES = _leaves(m.Request)
REPLY_CLASSES = [cls for cls in _leaves(m.Reply) if cls is not m.ErrorReply]
ENCODED = [encode(msg) for msg, _ in SAMPLES]
PLAINS = [plain for _, plain in SAMPLES]

# Every decoder a subject uses, with the types it may return.
DECODERS: list[tuple[str, Decoder[Any], tuple[type, ...]]] = [
    ("AgentCommand", Decoder(m.AgentCommand), (m.Assign, m.CancelJob, m.GangStart)),
    ("AgentEvent", Decoder(m.AgentEvent), (m.JobStarting, m.JobRunning, m.JobReady, m.JobExited,
                                           m.AgentInterrupted)),
    ("LogBatch", Decoder(m.LogBatch), (m.LogBatch,)),
    ("MetricBatch", Decoder(m.MetricBatch), (m.MetricBatch,)),
    ("Job", Decoder(m.Job), (m.Job,)),  # KV records share the codec
    ("AgentRecord", Decoder(m.AgentRecord), (m.AgentRecord,)),
    *[(cls.__name__, Decoder(cls), (cls,)) for cls in REQUEST_CLASSES],
    *[(f"{cls.__name__}|ErrorReply", Decoder(cls | m.ErrorReply), (cls, m.ErrorReply)) for cls in REPLY_CLASSES],
]


def test_samples_cover_every_message_class() -> None:
    """A new message class without a sample here fails, so the interop tests below always see all of them."""
    assert sorted(type(msg).__name__ for msg, _ in SAMPLES) == sorted(cls.__name__ for cls in MESSAGE_CLASSES)


def test_decoders_cover_every_request_and_reply() -> None:
    names = {name for name, _, _ in DECODERS}
    assert {cls.__name__ for cls in REQUEST_CLASSES} <= names
    assert {f"{cls.__name__}|ErrorReply" for cls in REPLY_CLASSES} <= names


# --- msgpack interop ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("msg", "plain"), SAMPLES, ids=[type(s).__name__ for s, _ in SAMPLES])
def test_plain_msgpack_reads_every_message(msg: m.Message, plain: dict[str, Any]) -> None:
    """The tag is under "type", fields go by name, array_like structs are lists."""
    assert msgpack.unpackb(encode(msg)) == plain


@pytest.mark.parametrize(("msg", "plain"), SAMPLES, ids=[type(s).__name__ for s, _ in SAMPLES])
def test_hand_packed_message_decodes_to_the_struct(msg: m.Message, plain: dict[str, Any]) -> None:
    assert Decoder(type(msg)).decode(msgpack.packb(plain)) == msg


@pytest.mark.parametrize(("name", "decoder", "types"), DECODERS, ids=[d[0] for d in DECODERS])
def test_each_subject_decoder_takes_its_own_and_refuses_the_rest(
    name: str, decoder: Decoder[Any], types: tuple[type, ...]
) -> None:
    mine = [(msg, data) for (msg, _), data in zip(SAMPLES, ENCODED, strict=True) if isinstance(msg, types)]
    assert mine or name in {"Job", "AgentRecord"}
    for msg, data in mine:
        assert decoder.decode(data) == msg
    for msg, data in zip([s for s, _ in SAMPLES], ENCODED, strict=True):
        if not isinstance(msg, types):
            with pytest.raises(DecodeError):
                decoder.decode(data)


def test_records_round_trip() -> None:
    assert Decoder(m.Job).decode(encode(JOB)) == JOB
    assert msgpack.unpackb(encode(JOB)) == JOB_PLAIN
    assert Decoder(m.AgentRecord).decode(encode(RECORD)) == RECORD
    assert msgpack.unpackb(encode(RECORD)) == RECORD_PLAIN


# --- refusals ----------------------------------------------------------------------------------------------


def _decode_error(decoder: Decoder[Any], data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decoder.decode(data)
    assert type(info.value) is DecodeError
    return info.value


@pytest.mark.parametrize(("msg", "plain"), SAMPLES, ids=[type(s).__name__ for s, _ in SAMPLES])
def test_unknown_top_level_field_is_refused(msg: m.Message, plain: dict[str, Any]) -> None:
    _decode_error(Decoder(type(msg)), msgpack.packb({**plain, "surprise": 1}))


@pytest.mark.parametrize(
    "plain",
    [
        _msg(m.PingRequest, meta={**ENV_PLAIN, "surprise": 1}),
        _msg(m.SubmitRequest, meta=ENV_PLAIN, spec={**SPEC_PLAIN, "surprise": 1}, user="ann"),
        _msg(m.SubmitRequest, meta=ENV_PLAIN, user="ann",
             spec={**SPEC_PLAIN, "resources": {**SPEC_PLAIN["resources"], "surprise": 1}}),
        _msg(m.RegisterRequest, meta=ENV_PLAIN, info={**INFO_PLAIN, "surprise": 1}, running=[]),
        _msg(m.HeartbeatRequest, meta=ENV_PLAIN, agent_id="a1", running=[[*REF_PLAIN, "surprise"]]),
        _msg(m.LogBatch, job_id="j1", attempt=1, seq=1, lines=[[1.0, 1, b"x", False, "surprise"]]),
    ],
    ids=["envelope", "spec", "spec.resources", "agent-info", "array-like-extra-item", "log-line-extra-item"],
)  # fmt: skip
def test_unknown_nested_field_is_refused(plain: dict[str, Any]) -> None:
    cls = getattr(m, plain["type"])
    _decode_error(Decoder(cls), msgpack.packb(plain))


@pytest.mark.parametrize(
    ("decoder", "plain"),
    [
        (Decoder(m.AgentCommand), _msg(m.JobStarting, job_id="j", attempt=1, agent_id="a", ts=1.0)),
        (Decoder(m.AgentEvent), {**_msg(m.JobStarting, job_id="j", attempt=1, agent_id="a"), "type": "JobDone"}),
        (Decoder(m.AgentEvent), {"job_id": "j", "attempt": 1, "agent_id": "a", "ts": 1.0}),  # no tag at all
        (Decoder(m.LogBatch), {"type": "MetricBatch", "job_id": "j", "attempt": 1, "seq": 1, "lines": []}),
        (Decoder(m.PingRequest), _msg(m.GetJobRequest, meta=ENV_PLAIN, job_id="j1")),
        (Decoder(m.PingReply | m.ErrorReply), _msg(m.GetJobReply, job=JOB_PLAIN)),
        (Decoder(m.PingReply | m.ErrorReply), {"type": 1, "controller_id": "c"}),
        (Decoder(m.AgentCommand), {"type": None}),
    ],
    ids=["other-union-member", "unknown-tag", "missing-tag", "single-type", "request", "reply", "int-tag", "null-tag"],
)
def test_wrong_tag_is_refused(decoder: Decoder[Any], plain: dict[str, Any]) -> None:
    _decode_error(decoder, msgpack.packb(plain))


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, -1, 2**40])
@pytest.mark.parametrize(
    ("msg", "plain"),
    [(s, p) for s, p in SAMPLES if isinstance(s, m.Request)],
    ids=[type(s).__name__ for s, _ in SAMPLES if isinstance(s, m.Request)],
)
def test_other_protocol_version_is_a_version_mismatch(msg: m.Request, plain: dict[str, Any], version: int) -> None:
    data = msgpack.packb({**plain, "meta": {**ENV_PLAIN, "version": version}})
    with pytest.raises(VersionMismatch) as info:
        Decoder(type(msg)).decode(data)
    assert type(info.value) is VersionMismatch
    assert info.value.code == "version_mismatch"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x91" * 100_000,  # deep nesting
        encode(m.PingRequest(meta=ENV))[:-1],  # truncated
        encode(m.PingRequest(meta=ENV)) + b"\x00",  # trailing bytes
        msgpack.packb(_msg(m.SubmitRequest, meta=ENV_PLAIN, user="u", spec={"run": "x", "outputs": None}))[:-1]
        + b"\x91" * 100_000,  # deep nesting under a field typed Any
        msgpack.packb(_msg(m.SubmitRequest, meta=ENV_PLAIN, user="u", spec={"run": "x", "outputs": None}))[:-1]
        + b"\xd5\xff\x00\x00",  # a msgpack timestamp of an impossible length
        msgpack.packb(_msg(m.LogBatch, job_id="j", attempt=1, seq=1, lines=[[1.0, 4, b"x"]])),  # no such stream
        msgpack.packb(_msg(m.ListJobsRequest, meta=ENV_PLAIN, states=["DONE"])),  # no such state
        msgpack.packb(_msg(m.CancelJob, job_id="j", attempt=2**64 - 1, grace=1.0)),
    ],
    ids=["empty", "reserved-byte", "deep", "truncated", "trailing", "deep-any", "bad-timestamp", "bad-enum-int",
         "bad-enum-str", "uint64"],
)  # fmt: skip
def test_malformed_input_is_a_decode_error(data: bytes) -> None:
    for _, decoder, types in DECODERS:
        try:
            assert isinstance(decoder.decode(data), types)
        except DecodeError as exc:
            assert type(exc) is DecodeError


# --- fuzzing: every decoder returns one of its types or raises one of ours ---------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_everywhere(data: bytes) -> None:
    for _, decoder, types in DECODERS:
        try:
            msg = decoder.decode(data)
        except (DecodeError, VersionMismatch) as exc:
            assert type(exc) in (DecodeError, VersionMismatch)
            event(type(exc).__name__)
        else:
            assert isinstance(msg, types)
            event("decoded")


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_everywhere(data)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(ENCODED)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC2, 0xC4, 0xCF, 0xD3,
                                              0xD6, 0xDC, 0xDD, 0xDE, 0xDF, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":  # a piece of another message
            other = draw(st.sampled_from(ENCODED))
            start = draw(st.integers(0, len(other) - 1))
            data[pos:pos] = other[start : start + draw(st.integers(1, 32))]
    return bytes(data)


@FUZZ
@given(_mutated())
def test_fuzz_mutated_messages(data: bytes) -> None:
    _decode_everywhere(data)


FIELD_NAMES = sorted({name for plain in PLAINS for name in plain} | set(ENV_PLAIN) | set(SPEC_PLAIN) | {"type"})

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=16)
    | st.binary(max_size=16)
    | st.sampled_from(["RUNNING", "alive", "Assign", "PingRequest", "", "r1"])
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
    | st.builds(msgpack.Timestamp, st.integers(-(2**34), 2**34 - 1), st.integers(0, 999_999_999))
)
_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8) | st.integers(-5, 5)
VALUES = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=16,
)


@st.composite
def _tagged_wrong_types(draw: st.DrawFn) -> Any:
    """A real tag with some of the class's real field names, each given a random value."""
    cls = draw(st.sampled_from(MESSAGE_CLASSES))
    names = [f for f in cls.__struct_fields__]
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    return {"type": cls.__name__, **{name: draw(VALUES) for name in chosen}}


@st.composite
def _sample_with_one_value_replaced(draw: st.DrawFn) -> Any:
    """A valid message whose value at one random path (however deep) is replaced by a random value."""

    def replace(node: Any) -> Any:
        children = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not children or draw(st.integers(0, 3)) == 0:
            return draw(VALUES)
        key = draw(st.sampled_from(children))
        copy = dict(node) if isinstance(node, dict) else list(node)
        copy[key] = replace(node[key])
        return copy

    return replace(draw(st.sampled_from(PLAINS)))


@FUZZ
@given(_tagged_wrong_types() | _sample_with_one_value_replaced())
def test_fuzz_well_formed_msgpack_with_wrong_types(value: Any) -> None:
    _decode_everywhere(msgpack.packb(value))


# --- errors ------------------------------------------------------------------------------------------------

DOCUMENTED_PARENTS = {
    errors.DecodeError: errors.InclError,
    errors.VersionMismatch: errors.InclError,
    errors.Unavailable: errors.InclError,
    errors.NoResponders: errors.Unavailable,
    errors.BadRequest: errors.InclError,
    errors.SpecInvalid: errors.BadRequest,
    errors.Unschedulable: errors.BadRequest,
    errors.NotFound: errors.InclError,
    errors.Conflict: errors.InclError,
    errors.NotAllowed: errors.InclError,
}


def test_every_code_maps_to_its_own_class() -> None:
    assert len(set(BY_CODE.values())) == len(BY_CODE)
    assert all(cls.code == code for code, cls in BY_CODE.items())
    assert set(BY_CODE.values()) == {InclError, *DOCUMENTED_PARENTS}


def test_hierarchy_is_the_one_in_the_docstring() -> None:
    """A VersionMismatch is not a DecodeError: receivers tell "upgrade" apart from "garbage"."""
    for cls, parent in DOCUMENTED_PARENTS.items():
        assert cls.__bases__ == (parent,)
        assert cls.code in (errors.__doc__ or "")
    assert not issubclass(VersionMismatch, DecodeError)


@pytest.mark.parametrize("code", sorted(BY_CODE))
def test_from_code_round_trips_class_and_field(code: str) -> None:
    exc = from_code(code, "it broke", field="resources.gpus")
    assert type(exc) is BY_CODE[code]
    assert (exc.code, exc.message, exc.field) == (code, "it broke", "resources.gpus")
    assert str(exc) == "resources.gpus: it broke"
    assert str(from_code(code, "it broke")) == "it broke"


@pytest.mark.parametrize("code", sorted(BY_CODE))
def test_error_crosses_the_wire_as_error_reply(code: str) -> None:
    sent = BY_CODE[code]("nope", field="job_id")
    reply = m.ErrorReply(code=sent.code, message=sent.message, field=sent.field)
    got = Decoder(m.PingReply | m.ErrorReply).decode(encode(reply))
    assert isinstance(got, m.ErrorReply)
    received = from_code(got.code, got.message, got.field)
    assert (type(received), received.message, received.field) == (type(sent), "nope", "job_id")


def test_unknown_code_is_a_plain_incl_error() -> None:
    exc = from_code("from_the_future", "new kind of failure", field="x")
    assert type(exc) is InclError
    assert (exc.code, exc.message, exc.field) == ("internal", "new kind of failure", "x")
