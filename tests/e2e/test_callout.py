"""One NATS identity per EC2 instance: a real nats-server configured as INCL renders it with the auth callout, the
controllers' callout service (`incl.auth.callout`) answering it, and agents presenting the signed instance identity
document they read from IMDS (the fake of tests/imds.py, signing with a throwaway key whose certificate stands for
AWS's). Each refusal is the server's, at connect; the static identities never depend on the callout."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from authstack import make_identities
from calloutstack import AUTH_TIMEOUT, CalloutNats, certificate, signing_key
from conftest import wait_for
from imds import FakeImds, Instance
from structlog.testing import capture_logs

from incl.agent.metadata import MetadataConfig, MetadataError, connect_token
from incl.auth import callout, instancedoc, jwt
from incl.bus.connection import AuthFailed, Bus, connect
from incl.proto import subjects
from incl.proto.errors import NotAllowed

GENUINE, STRANGER, GONE = "i-0a11ce", "i-0b0b", "i-0dead"
IMDS = MetadataConfig(timeout=1.0, attempts=2, retry_initial=0.01, retry_max=0.02)


@dataclass
class Observed:
    instance_id: str
    state: str


@dataclass
class Stack:
    nats: CalloutNats
    controller: Bus
    endpoints: dict[str, str]  # instance id -> its IMDS endpoint (signing as AWS)
    forger: str  # an IMDS endpoint of GENUINE whose documents are signed with a key AWS never had
    states: dict[str, str]  # what the provider describes: instance id -> EC2 state
    service: callout.Callout
    serving: asyncio.Task[None] | None = None

    async def dial(self, *, token: str | None = None, kind: str | None = None, name: str | None = None,
                   inbox: str | None = None) -> Bus:
        return await connect(self.nats.url, "test", connect_timeout=3, reconnect_wait=0.1, request_timeout=3,
                             max_reconnect_attempts=0, quiet=True, token=token, inbox_prefix=inbox,
                             creds=self.nats.creds(kind, name) if kind and name else None)

    async def as_instance(self, instance_id: str, endpoint: str | None = None) -> Bus:
        token = await connect_token(msgspec_replace(IMDS, endpoint or self.endpoints[instance_id]), instance_id)
        return await self.dial(token=token, inbox=subjects.agent_inbox(instance_id))


def msgspec_replace(cfg: MetadataConfig, endpoint: str) -> MetadataConfig:
    return msgspec.structs.replace(cfg, endpoint=endpoint)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CalloutNats]:
    home = tmp_path / "home"
    make_identities(home)
    nats = CalloutNats(home, tmp_path).start()
    yield nats
    nats.kill()


@pytest.fixture
async def stack(server: CalloutNats, tmp_path: Path) -> AsyncIterator[Stack]:
    aws, forged = signing_key(), signing_key()
    cert = certificate(aws, tmp_path, "aws")
    states = {GENUINE: "running", GONE: "terminated"}

    async def describe() -> list[Observed]:
        return [Observed(i, s) for i, s in states.items()]

    cfg = callout.CalloutConfig(enabled=True, aws_certificates=[str(cert)], records_ttl=0.0)
    service = callout.open_callout(cfg, callout.issuer_file(server.home), describe)
    async with FakeImds(signer=aws) as imds, FakeImds(signer=forged) as forger, \
            await connect(server.url, "controller", connect_timeout=3, reconnect_wait=0.1, request_timeout=3,
                          creds=server.creds("controller", "controller")) as controller:
        endpoints = {i: await imds.add(Instance(instance_id=i)) for i in (GENUINE, STRANGER, GONE)}
        s = Stack(server, controller, endpoints, await forger.add(Instance(instance_id=GENUINE)), states, service)
        s.serving = asyncio.create_task(callout.serve(controller, service))
        await asyncio.sleep(0.1)  # the subscription reaches the server
        try:
            yield s
        finally:
            s.serving.cancel()


async def received(controller: Bus, subject: str, publish: Any) -> bytes:
    """What arrives on `subject` (as the controller hears it) once `publish()` runs."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def hear(_: str, data: bytes) -> None:
        got.put_nowait(data)

    stop = await controller.serve(subject, "test", hear)
    await controller.publish("test.flush", b"")  # its publish flushes: the server has the subscription after it
    try:
        for _ in range(10):  # published again until heard: a loaded host once held a first one past 5 s
            await publish()
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(got.get(), 1.5)
        raise AssertionError(f"nothing arrived on {subject} in 10 tries")
    finally:
        await stop()


def secret_free(logs: list[dict[str, Any]], *secrets: str) -> bool:
    text = json.dumps(logs, default=str)
    return not any(s and s in text for s in secrets)


async def test_a_genuine_instance_connects_as_its_own_agent_and_no_other(stack: Stack) -> None:
    with capture_logs() as logs:
        bus = await stack.as_instance(GENUINE)
    async with bus:
        assert [e["agent_id"] for e in logs if e["event"] == "callout_granted"] == [GENUINE]
        own = subjects.events(GENUINE)
        assert await received(stack.controller, own, lambda: bus.publish(own, b"hello")) == b"hello"
        other = subjects.events("a1")
        await bus.publish(other, b"as a1")
        await wait_for(lambda: any(other.lower() in r for r in bus.refused), 5, "the server to refuse it")
        api_other = f"{subjects.API_PREFIX}.{subjects.AGENT}.a1.register"
        await bus.publish(api_other, b"{}")
        await wait_for(lambda: any(api_other.lower() in r for r in bus.refused), 5, "the server to refuse it")


async def test_forged_unknown_terminated_and_garbage_tokens_are_refused_at_connect(stack: Stack) -> None:
    forged = await connect_token(msgspec_replace(IMDS, stack.forger), GENUINE)
    genuine = await connect_token(msgspec_replace(IMDS, stack.endpoints[GENUINE]), GENUINE)
    head, document, signature = genuine.split(".")
    cases = {
        "forged signature": (forged, "does not verify"),
        "never launched": (await connect_token(msgspec_replace(IMDS, stack.endpoints[STRANGER]), STRANGER),
                           "was not launched"),
        "terminated": (await connect_token(msgspec_replace(IMDS, stack.endpoints[GONE]), GONE), "is terminated"),
        "another document, this signature": (f"{head}.{document[:-4]}AAAA.{signature}", "does not verify"),
        "garbage": ("garbage", "not an instance identity"),
        "garbage in the format": ("incl-iid1.%%%.!!!", "not base64url"),
        "a made-up document": (f"{head}.{document[:40]}.{signature}", "does not verify"),
        "no token at all": (None, "no token"),
    }
    for case, (token, reason) in cases.items():
        with capture_logs() as logs, pytest.raises(AuthFailed):
            await stack.dial(token=token)
        refusals = [e for e in logs if e["event"] == "callout_refused"]
        assert len(refusals) == 1 and reason in refusals[0]["reason"], (case, refusals)
        assert secret_free(logs, *(token or "").split(".")[1:]), case
    # Longer than a CONNECT line may be, the server drops it before asking; the callout would refuse it too.
    with pytest.raises(instancedoc.Refused, match="more than"):
        instancedoc.verify("incl-iid1." + "A" * 9000 + ".AA", [])
    server_log = stack.nats.output()
    assert "Auth callout service returned an error: the instance identity signature does not verify" in server_log
    assert signature not in server_log and document not in server_log


async def test_only_the_server_sends_requests_and_anything_else_is_logged_and_dropped(stack: Stack) -> None:
    """No client may publish on the callout's subject (the server refuses even the controller, whose permissions
    are `>`); and what is not a server's signed request, were it to arrive, gets no answer and a log line."""
    with pytest.raises(NotAllowed):
        await stack.controller.request_raw(callout.SUBJECT, b"forged", timeout=2)
    seed = callout.read_issuer(callout.issuer_file(stack.nats.home))  # an account key, not a server's
    claims = {"aud": callout.REQUEST_AUDIENCE, "nats": {"type": "authorization_request", "user_nkey": "U"}}
    for garbage in (b"\xff\x00 not a jwt", b"a.b.c", jwt.encode(claims, seed).encode()):
        with capture_logs() as logs:
            assert await stack.service.answer(callout.SUBJECT, garbage) is None
        assert [e["event"] for e in logs] == ["callout_request_invalid"]
    async with await stack.as_instance(GENUINE):
        pass


async def test_the_account_and_region_are_checked_when_configured(stack: Stack, server: CalloutNats,
                                                                    tmp_path: Path) -> None:
    token = await connect_token(msgspec_replace(IMDS, stack.endpoints[GENUINE]), GENUINE)
    assert stack.serving is not None
    stack.serving.cancel()
    aws_cert = tmp_path / "aws.pem"
    for limits, reason in (({"account_ids": ["999999999999"]}, "AWS account 123456789012"),
                           ({"regions": ["eu-west-1"]}, "region us-east-1")):
        cfg = callout.CalloutConfig(enabled=True, aws_certificates=[str(aws_cert)], **limits)

        async def describe() -> list[Observed]:
            return [Observed(GENUINE, "running")]

        serving = asyncio.create_task(callout.serve(
            stack.controller, callout.open_callout(cfg, callout.issuer_file(server.home), describe)))
        await asyncio.sleep(0.1)
        try:
            with capture_logs() as logs, pytest.raises(AuthFailed):
                await stack.dial(token=token)
            assert any(reason in e.get("reason", "") for e in logs), logs
        finally:
            serving.cancel()


async def test_static_identities_connect_with_the_callout_up_and_with_none_serving(stack: Stack) -> None:
    async with await stack.dial(kind="agent", name="a1", inbox=subjects.agent_inbox("a1")), \
            await stack.dial(kind="user", name="bob"):
        pass
    assert stack.serving is not None
    stack.serving.cancel()
    await asyncio.sleep(0.1)
    for kind, name in (("agent", "a1"), ("user", "alice"), ("controller", "controller")):
        async with await stack.dial(kind=kind, name=name, inbox=subjects.agent_inbox(name) if kind == "agent"
                                    else None) as bus:
            assert not bus.refused
    # An instance, though, waits for a controller: with none, the server refuses it after its auth timeout.
    with pytest.raises(AuthFailed):
        await asyncio.wait_for(stack.as_instance(GENUINE), AUTH_TIMEOUT + 5)


async def test_an_agent_refuses_a_document_of_another_instance_than_its_id(stack: Stack) -> None:
    """The agent's own check: the rights granted are the document's instance's, so its id must be that one."""
    with pytest.raises(MetadataError, match="agent_id must be the instance id"):
        await connect_token(msgspec_replace(IMDS, stack.endpoints[GENUINE]), "a1")


# nats-py leaves the socket of a refused reconnect to the garbage collector (1 run in 4 here), which pytest's
# unraisable-exception check would turn into a failure of this test; what is under test is that it reconnects.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_instance_cut_off_while_no_controller_answers_reconnects_once_one_does(stack: Stack) -> None:
    """A NATS restart during a controller outage: the agent's reconnects are refused, and it keeps trying."""
    cut, back = asyncio.Event(), asyncio.Event()

    async def on_disconnect() -> None:
        cut.set()

    async def on_reconnect() -> None:
        back.set()

    token = await connect_token(msgspec_replace(IMDS, stack.endpoints[GENUINE]), GENUINE)
    async with await connect(stack.nats.url, "agent", connect_timeout=3, reconnect_wait=0.1, request_timeout=3,
                             token=token, inbox_prefix=subjects.agent_inbox(GENUINE), on_disconnect=on_disconnect,
                             on_reconnect=on_reconnect) as bus:
        assert stack.serving is not None
        stack.serving.cancel()
        with capture_logs() as logs:
            stack.nats.kill()
            stack.nats.start()
            await asyncio.wait_for(cut.wait(), 10)
            await wait_for(lambda: any(e["event"] == "nats_auth_failed" for e in logs), 10, "a refused reconnect")
        assert not back.is_set()
        serving = asyncio.create_task(callout.serve(stack.controller, stack.service))
        try:
            await asyncio.wait_for(back.wait(), 15)
            own = subjects.events(GENUINE)
            assert await received(stack.controller, own, lambda: bus.publish(own, b"back")) == b"back"
        finally:
            serving.cancel()
