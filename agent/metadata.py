"""What the agent knows about the machine it runs on: EC2 instance metadata through IMDSv2, or local values.

`Imds` (aiohttp): a session token from `PUT /latest/api/token`, renewed `token_refresh_before` seconds before it
expires and once more when a read is refused with 401; then GETs under `/latest/meta-data/` (and the signed
instance identity document under `/latest/dynamic/`, the agent's connect token when its config says so).
Connection errors, timeouts, 429 and 5xx are retried (`attempts`, backing off); what still fails raises `MetadataError`.
`LocalMetadata` gives hostname-based values with no HTTP, so the agent's code path is the same off EC2.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal, NamedTuple, Protocol

import aiohttp
import msgspec
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

log = structlog.get_logger()

TOKEN_PATH = "/latest/api/token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


class MetadataConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    endpoint: str = "http://169.254.169.254"
    token_ttl: Annotated[int, msgspec.Meta(ge=1, le=21600)] = 21600  # seconds a session token lives
    token_refresh_before: float = 60.0  # renew the token this long before it expires
    timeout: float = 2.0  # one HTTP request
    attempts: int = 3  # tries of one read on connection errors, timeouts, 429 and 5xx
    retry_initial: float = 0.1
    retry_max: float = 1.0


class MetadataError(Exception):
    """The metadata service did not answer, or not as expected."""


class _Transient(Exception):
    pass


class InstanceIdentity(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    instance_type: str
    availability_zone: str
    lifecycle: Literal["spot", "on-demand"]
    local_ipv4: str


class InstanceAction(NamedTuple):
    """A spot interruption notice: what EC2 will do (terminate, stop, hibernate) and when."""
    action: str
    time: datetime


class Metadata(Protocol):
    async def identity(self) -> InstanceIdentity: ...

    async def spot_notice(self) -> InstanceAction | None: ...

    async def rebalance(self) -> datetime | None: ...


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str):
        raise MetadataError(f"expected an ISO 8601 time, got {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise MetadataError(f"expected an ISO 8601 time, got {value!r}") from None


def _json(text: str) -> dict[str, object]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise MetadataError(f"expected a JSON object, got {text[:200]!r}")
    return data


class Imds:
    """`async with Imds(cfg) as md: await md.identity()` — one HTTP session, one token at a time."""

    def __init__(self, cfg: MetadataConfig = MetadataConfig(), *, clock: Callable[[], float] = time.monotonic) -> None:  # noqa: B008 (frozen, so sharing it is safe)
        self.cfg = cfg
        self._clock = clock
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Imds:
        self._http = aiohttp.ClientSession(self.cfg.endpoint, timeout=aiohttp.ClientTimeout(total=self.cfg.timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()

    async def _session_token(self, stale: str | None = None) -> str:
        """The current token; a new one when it is near expiry, or when `stale` (just refused) is current."""
        async with self._lock:
            if self._token is None or self._token == stale or self._clock() >= self._renew_at:
                assert self._http is not None, "use Imds as an async context manager"
                started = self._clock()
                async with self._http.put(TOKEN_PATH, headers={TTL_HEADER: str(self.cfg.token_ttl)}) as r:
                    if r.status == 429 or r.status >= 500:
                        raise _Transient(f"token: HTTP {r.status}")
                    if r.status != 200:
                        raise MetadataError(f"IMDS refused a session token: HTTP {r.status}")
                    self._token = await r.text()
                self._renew_at = started + self.cfg.token_ttl - self.cfg.token_refresh_before
                log.debug("imds_token", ttl=self.cfg.token_ttl)
            return self._token

    async def _get_once(self, path: str, root: str) -> str | None:
        assert self._http is not None, "use Imds as an async context manager"
        token = await self._session_token()
        for renewed in (False, True):
            async with self._http.get(f"/latest/{root}/{path}", headers={TOKEN_HEADER: token}) as r:
                if r.status == 200:
                    return await r.text()
                if r.status == 404:
                    return None
                if r.status == 429 or r.status >= 500:
                    raise _Transient(f"{path}: HTTP {r.status}")
                if r.status != 401 or renewed:
                    raise MetadataError(f"IMDS {path}: HTTP {r.status}")
            log.info("imds_token_refused", path=path)
            token = await self._session_token(stale=token)
        raise AssertionError("unreachable")

    async def get(self, path: str, root: str = "meta-data") -> str | None:
        """The text at `<root>/<path>` (`meta-data/...`, `dynamic/...`); None when there is none (404)."""
        cfg = self.cfg
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(cfg.attempts), reraise=True,
                wait=wait_random_exponential(multiplier=cfg.retry_initial, max=cfg.retry_max),
                retry=retry_if_exception_type((_Transient, aiohttp.ClientError, TimeoutError)),
            ):
                with attempt:
                    return await self._get_once(path, root)
        except (_Transient, aiohttp.ClientError, TimeoutError) as exc:
            raise MetadataError(f"IMDS {path}: {exc!r} after {cfg.attempts} tries") from exc
        raise AssertionError("unreachable")

    async def _require(self, path: str, root: str = "meta-data") -> str:
        value = await self.get(path, root)
        if value is None:
            raise MetadataError(f"IMDS has no {root}/{path}")
        return value

    async def identity_document(self) -> tuple[str, str]:
        """The instance identity document (JSON, exactly as served: its signature covers these bytes) and AWS's
        base64 signature of it (RSA SHA-256, checked with AWS's public certificate: `incl.auth.instancedoc`)."""
        return (await self._require("instance-identity/document", "dynamic"),
                await self._require("instance-identity/signature", "dynamic"))

    async def identity(self) -> InstanceIdentity:
        lifecycle = await self._require("instance-life-cycle")
        return InstanceIdentity(
            instance_id=await self._require("instance-id"), instance_type=await self._require("instance-type"),
            availability_zone=await self._require("placement/availability-zone"),
            lifecycle="spot" if lifecycle == "spot" else "on-demand", local_ipv4=await self._require("local-ipv4"))

    async def spot_notice(self) -> InstanceAction | None:
        text = await self.get("spot/instance-action")
        if text is None:
            return None
        data = _json(text)
        return InstanceAction(action=str(data.get("action")), time=_parse_time(data.get("time")))

    async def rebalance(self) -> datetime | None:
        text = await self.get("events/recommendations/rebalance")
        return None if text is None else _parse_time(_json(text).get("noticeTime"))


class LocalMetadata:
    """Off EC2: the hostname stands for the instance, which is on-demand and never interrupted."""

    async def __aenter__(self) -> LocalMetadata:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def identity(self) -> InstanceIdentity:
        host = socket.gethostname()
        try:
            address = (await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET))[0][4][0]
        except OSError:
            address = "127.0.0.1"
        return InstanceIdentity(instance_id=host, instance_type="local", availability_zone="local",
                                lifecycle="on-demand", local_ipv4=str(address))

    async def spot_notice(self) -> InstanceAction | None:
        return None

    async def rebalance(self) -> datetime | None:
        return None


async def connect_token(cfg: MetadataConfig, agent_id: str) -> str:
    """The NATS connect token of an EC2 agent: this instance's signed identity document (`incl.auth.instancedoc`),
    whose instance id must be `agent_id` (the controllers' auth callout grants the rights of that agent id only).
    MetadataError if IMDS has no document or it names another instance."""
    from incl.auth import instancedoc  # noqa: PLC0415 - only agents that connect this way need it

    async with Imds(cfg) as imds:
        document, signature = await imds.identity_document()
    instance_id = _json(document).get("instanceId")
    if instance_id != agent_id:
        raise MetadataError(f"the instance identity document is for {instance_id!r}, but this agent's id is "
                            f"{agent_id!r}: with nats_identity: instance, agent_id must be the instance id")
    try:
        return instancedoc.token(document, signature)
    except instancedoc.Refused as exc:
        raise MetadataError(str(exc)) from None


def open_metadata(provider: str, cfg: MetadataConfig = MetadataConfig()) -> Imds | LocalMetadata:  # noqa: B008 (frozen)
    """The metadata source for the agent's `provider`: IMDSv2 on `aws`, local values anywhere else."""
    return Imds(cfg) if provider == "aws" else LocalMetadata()
