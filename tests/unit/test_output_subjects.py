"""The shape of an attempt's output subjects and the rights over them (pure): the writing agent is the last token,
an agent may publish only under its own id, and a user reads their jobs' subjects with any agent token, and the
subjects from before the agent token."""

from __future__ import annotations

import pytest

from incl.auth.identities import Identity
from incl.auth.permissions import permissions
from incl.proto import subjects
from incl.proto.messages import Attempt, Job, JobState, Node
from incl.proto.spec import load_spec

JOB = Job(id="j-1", spec=load_spec({"run": "true", "team": "nlp"}), user="bob", state=JobState.RUNNING,
          submitted_at=1.0, updated_at=1.0)


def test_an_output_subject_ends_in_the_agent_that_writes_it_and_a_reader_reads_any_agents() -> None:
    assert subjects.logs(JOB, "k1", "a1") == "incl.logs.nlp.bob.j-1.k1.a1"
    assert subjects.output(subjects.METRICS_STREAM, JOB, "k1", "a1") == "incl.metrics.nlp.bob.j-1.k1.a1"
    assert subjects.output(subjects.LOGS_STREAM, JOB, "k1", subjects.ANY_AGENT) == "incl.logs.nlp.bob.j-1.k1.*"
    assert subjects.legacy_output(subjects.LOGS_STREAM, JOB, "k1") == "incl.logs.nlp.bob.j-1.k1"
    assert subjects.output_writer("incl.logs.nlp.bob.j-1.k1.a1") == "a1"
    assert subjects.output_writer("incl.logs.nlp.bob.j-1.k1") is None  # from before the agent token
    for bad in ("a.b", ">", ""):
        with pytest.raises(ValueError):
            subjects.logs(JOB, "k1", bad)


def test_an_attempts_writers_are_its_agent_and_every_ranks() -> None:
    single = Attempt(number=1, agent_id="a1", state=JobState.RUNNING, assigned_at=1.0)
    assert single.writers == {"a1"} and not single.agent_subjects  # a stored record from before reads as old
    gang = Attempt(number=1, agent_id="a1", state=JobState.RUNNING, assigned_at=1.0,
                   nodes=[Node(rank=0, agent_id="a1", state=JobState.RUNNING),
                          Node(rank=1, agent_id="a2", state=JobState.RUNNING)])
    assert gang.writers == {"a1", "a2"}


def test_an_agent_may_publish_output_only_under_its_own_id() -> None:
    pub = permissions(Identity(kind="agent", name="a1", public_key="U"))["publish"]["allow"]
    output = [s for s in pub if "incl.logs" in s or "incl.metrics" in s]
    assert sorted(output) == sorted([
        "incl.logs.*.*.*.*.a1", "incl.metrics.*.*.*.*.a1",
        "$JS.API.DIRECT.GET.INCL_LOGS.incl.logs.*.*.*.*.a1",
        "$JS.API.DIRECT.GET.INCL_METRICS.incl.metrics.*.*.*.*.a1"])


def test_a_user_reads_their_jobs_output_with_any_agent_token_and_the_old_subjects() -> None:
    pub = permissions(Identity(kind="user", name="bob", public_key="U", teams=["nlp"]))["publish"]["allow"]
    create = "$JS.API.CONSUMER.CREATE.INCL_LOGS.*.incl.logs."
    assert {f"{create}*.bob.*.*.*", f"{create}nlp.*.*.*.*", f"{create}*.bob.*.*", f"{create}nlp.*.*.*"} \
        == {s for s in pub if s.startswith(create)}
