"""Request subjects name their caller, and the controller believes the subject, never the payload."""

from __future__ import annotations

import pytest

from incl.controller import callers
from incl.proto import subjects
from incl.proto.errors import NotAllowed
from incl.proto.messages import (
    AgentInfo,
    Envelope,
    HeartbeatRequest,
    PingRequest,
    RegisterRequest,
    Resources,
    SubmitRequest,
)
from incl.proto.spec import JobSpec


def test_a_request_subject_names_kind_caller_and_verb() -> None:
    assert subjects.user_api("ann", subjects.LIST_JOBS) == "incl.api.user.ann.jobs.list"
    assert subjects.caller("incl.api.user.ann.jobs.list") == subjects.Caller("user", "ann", "jobs.list")
    assert subjects.caller(subjects.agent_api("i-0abc", subjects.HEARTBEAT)) == \
        subjects.Caller("agent", "i-0abc", "agents.heartbeat")


@pytest.mark.parametrize("subject", ["incl.api.ping", "incl.api.user.ann", "incl.api.root.ann.ping",
                                     "incl.events.a1", "other.api.user.ann.ping"])
def test_a_subject_that_names_no_caller_is_not_a_request(subject: str) -> None:
    assert subjects.caller(subject) is None


@pytest.mark.parametrize("name", ["", "a.b", "*", ">", "a b", "x\n"])
def test_a_name_that_is_not_one_subject_token_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot name an identity"):
        subjects.user_api(name, subjects.PING)


def _submit(user: str) -> SubmitRequest:
    return SubmitRequest(meta=Envelope.new("x"), spec=JobSpec(run="true"), user=user)


def test_a_payload_naming_its_own_caller_passes() -> None:
    callers.check(subjects.Caller("user", "ann", subjects.SUBMIT), _submit("ann"))
    callers.check(subjects.Caller("user", "ann", subjects.PING), PingRequest(meta=Envelope.new("bob")))


def test_a_submit_claiming_another_user_is_refused_not_rewritten() -> None:
    with pytest.raises(NotAllowed, match="names user 'bob' but comes from user 'ann'"):
        callers.check(subjects.Caller("user", "ann", subjects.SUBMIT), _submit("bob"))


def test_an_agent_cannot_speak_for_another_agent() -> None:
    info = AgentInfo(agent_id="a2", hostname="h", capacity=Resources(cpus=1, memory=1))
    with pytest.raises(NotAllowed):
        callers.check(subjects.Caller("agent", "a1", subjects.REGISTER),
                      RegisterRequest(meta=Envelope.new("a1"), info=info))
    with pytest.raises(NotAllowed):
        callers.check(subjects.Caller("agent", "a1", subjects.HEARTBEAT),
                      HeartbeatRequest(meta=Envelope.new("a1"), agent_id="a2"))
