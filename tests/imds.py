"""A faithful fake of the EC2 instance metadata service, IMDSv2, on 127.0.0.1 inside the test's event loop.

One fake serves several instances, one port each: `endpoint = await imds.add(Instance(...))` and point a client
(or an agent process, or the user-data script) at `endpoint`. As on EC2:

- `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` in 1..21600 (else 400), is refused with
  403 when it carries `X-Forwarded-For`, and answers a token valid on that instance for that many seconds;
  any other method there is 405.
- Every other path is GET only. A missing token (when tokens are required), or an unknown, expired or other
  instance's token (always) is 401.
- `meta-data/spot/instance-action` is 404 until `notice(instance_id)`, then
  `{"action": "terminate", "time": <notice + 120 s>}` with that fixed time in ISO 8601, Z;
  `meta-data/events/recommendations/rebalance` is 404 until `rebalance(instance_id)`, then `{"noticeTime": ...}`.
- `instance-id`, `instance-type`, `local-ipv4`, `placement/availability-zone`, `instance-life-cycle`.
- With `signer` (an RSA private key, the test's stand-in for AWS's), `dynamic/instance-identity/document` (the JSON
  AWS serves: instanceId, accountId, region, ...) and `dynamic/instance-identity/signature` (its bytes signed,
  PKCS#1 v1.5 SHA-256, base64 in lines of 64 as AWS serves it); without one, both are 404.

Faults to inject: `throttle(instance_id, n)` answers the next n requests with 429; `stall(instance_id, s)`
delays answers by s seconds; `revoke(instance_id)` invalidates the tokens handed out so far; `reject_tokens`
refuses every token. Time comes from `clock` (epoch seconds), so tests move it instead of sleeping.
`requests` records every request: (instance id, method, path, status, whether it carried a token).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple

from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600
NOTICE_LEAD = 120.0  # a spot interruption notice comes two minutes before the action


@dataclass
class Instance:
    instance_id: str
    instance_type: str = "g5.xlarge"
    availability_zone: str = "us-east-1a"
    lifecycle: str = "spot"  # IMDS's instance-life-cycle: spot | on-demand
    local_ipv4: str = "10.0.0.10"
    instance_action: dict[str, str] | None = None
    rebalance: dict[str, str] | None = None
    throttled: int = 0
    stall: float = 0.0
    generation: int = 0  # tokens handed out before the last revoke() are invalid
    account_id: str = "123456789012"
    image_id: str = "ami-0123456789abcdef0"
    pending_time: str = "2023-11-14T22:13:20Z"

    def document(self) -> str:
        """The instance identity document, laid out as IMDS serves it."""
        return json.dumps({
            "accountId": self.account_id, "architecture": "x86_64", "availabilityZone": self.availability_zone,
            "billingProducts": None, "devpayProductCodes": None, "marketplaceProductCodes": None,
            "imageId": self.image_id, "instanceId": self.instance_id, "instanceType": self.instance_type,
            "kernelId": None, "pendingTime": self.pending_time, "privateIp": self.local_ipv4, "ramdiskId": None,
            "region": self.availability_zone[:-1], "version": "2017-09-30"}, indent=2)


class Request(NamedTuple):
    instance_id: str
    method: str
    path: str
    status: int
    token: bool


@dataclass
class _Token:
    instance_id: str
    generation: int
    expires: float


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeClock:
    """Epoch seconds that move only when told to."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeImds:
    def __init__(self, *, tokens_required: bool = True, clock: Callable[[], float] = time.time,
                 signer: Any = None) -> None:
        self.tokens_required = tokens_required
        self.signer = signer  # an RSA private key (cryptography's) signing identity documents, as AWS's does
        self.clock = clock
        self.reject_tokens = False
        self.requests: list[Request] = []
        self.instances: dict[str, Instance] = {}
        self._tokens: dict[str, _Token] = {}
        self._runners: list[web.AppRunner] = []
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()  # cuts stalls short at the end

    async def __aenter__(self) -> FakeImds:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        for runner in self._runners:
            await runner.cleanup()

    async def add(self, instance: Instance) -> str:
        """Serve (a copy of) `instance` on a port of its own; returns its endpoint (http://169.254.169.254 on EC2)."""
        instance = replace(instance)
        self.instances[instance.instance_id] = instance
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", partial(self._handle, instance))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    # --- what a test does to an instance --------------------------------------------------------------------

    def notice(self, instance_id: str, action: str = "terminate") -> str:
        """Give the instance a spot interruption notice; returns its action time (now + 120 s)."""
        at = iso(self.clock() + NOTICE_LEAD)
        self.instances[instance_id].instance_action = {"action": action, "time": at}
        return at

    def rebalance(self, instance_id: str) -> str:
        at = iso(self.clock())
        self.instances[instance_id].rebalance = {"noticeTime": at}
        return at

    def throttle(self, instance_id: str, count: int) -> None:
        self.instances[instance_id].throttled = count

    def stall(self, instance_id: str, seconds: float) -> None:
        self.instances[instance_id].stall = seconds

    def revoke(self, instance_id: str) -> None:
        self.instances[instance_id].generation += 1

    async def wait(self, check: Callable[[list[Request]], bool], timeout: float = 5.0) -> list[Request]:
        """Wait until `check(requests)` holds."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: check(self.requests))
        return self.requests

    # --- the service ----------------------------------------------------------------------------------------

    async def _handle(self, inst: Instance, request: web.Request) -> web.Response:
        if inst.stall:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), inst.stall)
        response = self._answer(inst, request)
        async with self._changed:
            self.requests.append(Request(inst.instance_id, request.method, request.path, response.status,
                                         TOKEN_HEADER in request.headers))
            self._changed.notify_all()
        return response

    def _answer(self, inst: Instance, request: web.Request) -> web.Response:
        if inst.throttled > 0:
            inst.throttled -= 1
            return web.Response(status=429, text="Too Many Requests")
        if request.path == TOKEN_PATH:
            return self._put_token(inst, request)
        if request.method != "GET":
            return web.Response(status=405, text="Method Not Allowed")
        if not self._authorized(inst, request.headers.get(TOKEN_HEADER)):
            return web.Response(status=401, text="Unauthorized")
        if request.path.startswith("/latest/meta-data/"):
            body = self._meta(inst, request.path.removeprefix("/latest/meta-data/"))
        else:
            body = self._dynamic(inst, request.path.removeprefix("/latest/dynamic/"))
        if body is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(text=body)

    def _put_token(self, inst: Instance, request: web.Request) -> web.Response:
        if request.method != "PUT":
            return web.Response(status=405, text="Method Not Allowed")
        if "X-Forwarded-For" in request.headers:
            return web.Response(status=403, text="Forbidden")
        ttl = request.headers.get(TTL_HEADER, "")
        if not (ttl.isascii() and ttl.isdigit() and 1 <= int(ttl) <= MAX_TTL):
            return web.Response(status=400, text="Bad Request")
        token = secrets.token_urlsafe(42)
        now = self.clock()
        self._tokens[token] = _Token(inst.instance_id, generation=inst.generation, expires=now + int(ttl))
        return web.Response(text=token, headers={TTL_HEADER: ttl})

    def _authorized(self, inst: Instance, token: str | None) -> bool:
        if token is None:
            return not self.tokens_required
        held = self._tokens.get(token)
        return (held is not None and not self.reject_tokens and held.instance_id == inst.instance_id
                and held.generation == inst.generation and self.clock() < held.expires)

    def _dynamic(self, inst: Instance, path: str) -> str | None:
        if self.signer is None or path not in ("instance-identity/document", "instance-identity/signature"):
            return None
        document = inst.document()
        if path.endswith("document"):
            return document
        signed = base64.b64encode(self.signer.sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
        return "\n".join(signed[i:i + 64] for i in range(0, len(signed), 64))

    def _meta(self, inst: Instance, path: str) -> str | None:
        values = {
            "instance-id": inst.instance_id,
            "instance-type": inst.instance_type,
            "local-ipv4": inst.local_ipv4,
            "placement/availability-zone": inst.availability_zone,
            "instance-life-cycle": inst.lifecycle,
            "spot/instance-action": json.dumps(inst.instance_action) if inst.instance_action else None,
            "events/recommendations/rebalance": json.dumps(inst.rebalance) if inst.rebalance else None,
        }
        if path == "":
            return "\n".join(sorted({k.split("/")[0] + ("/" if "/" in k else "") for k, v in values.items()
                                     if v is not None}))
        return values.get(path)
