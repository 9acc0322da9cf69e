"""Who a request comes from: the caller its subject names, never what its payload says.

The NATS server lets each identity publish requests only under its own name (`incl.api.user.<name>.>`,
`incl.api.agent.<agent_id>.>`), so the subject is the proof of who asks. A payload that also names an identity (a
submit's `user`, an agent's `agent_id`) must name the same one: a request that claims to be someone else is refused
rather than silently corrected, so a client with a bug (or a forger) learns at once that it was not believed.
"""

from __future__ import annotations

from incl.proto import subjects
from incl.proto.errors import NotAllowed
from incl.proto.messages import AssignmentRequest, HeartbeatRequest, RegisterRequest, SubmitRequest
from incl.proto.studies import SubmitStudyRequest


def claimed(req: object) -> str | None:
    """The identity a request's payload names as its sender, if its type carries one."""
    match req:
        case SubmitRequest(user=user) | SubmitStudyRequest(user=user):
            return user
        case RegisterRequest(info=info):
            return info.agent_id
        case HeartbeatRequest(agent_id=agent_id) | AssignmentRequest(agent_id=agent_id):
            return agent_id
    return None


def check(caller: subjects.Caller, req: object) -> None:
    """Refuse a request whose payload names another identity than its subject."""
    named = claimed(req)
    if named is not None and named != caller.name:
        raise NotAllowed(f"not allowed: the request names {caller.kind} {named!r} but comes from "
                         f"{caller.kind} {caller.name!r}")
