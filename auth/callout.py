"""The NATS auth callout: one identity per EC2 instance, decided by the controllers at connect.

nats-server (`authorization { auth_callout { issuer, auth_users } }`, `incl.auth.serverconf`) sends every client not
in `auth_users` (the static identities, which connect as before) to `$SYS.REQ.USER.AUTH` as an authorization request
JWT, signed by the server's key, that carries the client's connect options and a user nkey the server made for it.
A controller answers with an authorization response JWT, signed by the issuer's account key, that either carries a
user JWT for that nkey (with the rights it gets) or an error the server logs and refuses the client with.

The only clients granted here are EC2 agents presenting their signed instance identity document as their token
(`incl.auth.instancedoc`): the signature must verify against AWS's certificate, the account and region be allowed,
and the instance be one the controller launched that has not terminated (`Launched`, the provider's records). The
agent then gets exactly `permissions.permissions()` of the agent whose id is the instance id. Anything else is
refused with a reason, logged here (`callout_refused`) without the token.

Every controller, leader or standby, serves the callout in one queue group: a leader lost does not stop connects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import structlog

from incl.auth import instancedoc, jwt, keys
from incl.auth.identities import AGENT, Identity
from incl.auth.permissions import permissions

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

    from incl.bus.connection import Bus

log = structlog.get_logger()

SUBJECT = "$SYS.REQ.USER.AUTH"  # nats-server's, not INCL's
QUEUE = "incl-callout"
REQUEST_AUDIENCE = "nats-authorization-request"
GLOBAL_ACCOUNT = "$G"  # the account of a server configured without accounts: where the granted user is placed
GONE = frozenset({"shutting-down", "terminated"})


class CalloutConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The controller's side of the callout. Off unless `enabled`; the server's side is rendered with the issuer's
    public key (`incl.auth.serverconf`)."""
    enabled: bool = False
    # The file of the account seed (`SA...`) answers are signed with; None: $INCL_HOME/auth/callout.nk.
    issuer_seed: str | None = None
    aws_certificates: list[str] = []  # PEM files: AWS's public certificate(s) for the identity signature (per region)
    account_ids: list[str] = []  # documents of these AWS accounts only; empty: any
    regions: list[str] = []  # documents of these regions only; empty: any
    timeout: float = 1.5  # one decision, describing instances included; keep it under the server's auth timeout
    records_ttl: float = 5.0  # the cluster's instances as last described are reused this long
    # An instance not in the last describe is looked for afresh, but at most this often: a stream of connects
    # with documents of instances not ours (another account's) costs EC2 one describe per this many seconds.
    refresh_min: float = 1.0
    # A server's request expires whole seconds after it is made (its `exp` is truncated to the second): forgiven this
    # much, for a server whose clock runs ahead of ours or a request that waited on a loaded host. The server gives
    # up on the client after its own auth timeout anyway, so a late answer grants nothing.
    clock_skew: float = 2.0


class Refusal(Exception):
    """Why a client is refused: its message goes to the server's log and to ours, and never holds the token."""


class Observed(Protocol):
    @property
    def instance_id(self) -> str: ...

    @property
    def state(self) -> str: ...


class Launched:
    """The instances the controller launched, as its provider describes them (tagged with the cluster, any state):
    one describe serves every connect for `ttl` seconds; an instance not in it is looked for afresh (it may have
    been launched since), at most once per `refresh_min` seconds, concurrent lookups sharing that describe."""

    def __init__(self, describe: Callable[[], Awaitable[Iterable[Observed]]], ttl: float, refresh_min: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._describe, self._ttl, self._refresh_min, self._clock = describe, ttl, refresh_min, clock
        self._states: dict[str, str] = {}
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def state(self, instance_id: str) -> str | None:
        """EC2's state of the instance (pending, running, ..., terminated); None: never launched by this cluster."""
        age = self._clock() - self._at
        if age < self._ttl and (instance_id in self._states or age < self._refresh_min):
            return self._states.get(instance_id)
        asked = self._clock()
        async with self._lock:
            if self._at < asked:  # nobody described since this lookup began
                self._states = {i.instance_id: i.state for i in await self._describe()}
                self._at = self._clock()
        return self._states.get(instance_id)


def issuer_file(home: Path) -> Path:
    return home / "auth" / "callout.nk"


def ensure_issuer(path: Path) -> str:
    """The issuer's account seed in `path`, made (mode 0600) the first time. Returns its public key (`A...`)."""
    import nkeys  # noqa: PLC0415 - lazy, as in incl.auth.keys

    if not path.exists():
        import secrets  # noqa: PLC0415

        keys.private_dir(path.parent)
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT).decode()
        keys.write_private(path, f"# incl auth callout issuer: signs every identity the callout grants\n{seed}\n")
    return account_public_key(read_issuer(path))


def read_issuer(path: Path) -> str:
    seed = next((line.strip() for line in path.read_text().splitlines() if line.strip().startswith("SA")), None)
    if seed is None:
        raise ValueError(f"{path} holds no account seed (SA...)")
    return seed


def account_public_key(seed: str) -> str:
    import nkeys  # noqa: PLC0415

    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()


def user_claims(user_nkey: str, agent_id: str) -> dict[str, Any]:
    """The user JWT's claims: the agent `agent_id`'s permissions, placed in the server's global account."""
    rights = permissions(Identity(kind=AGENT, name=agent_id, public_key=user_nkey))
    nats = {"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}
    for ours, theirs in (("publish", "pub"), ("subscribe", "sub")):
        nats[theirs] = {k: v for k, v in rights.get(ours, {}).items() if k in ("allow", "deny")}
    return {"sub": user_nkey, "name": f"agent-{agent_id}", "aud": GLOBAL_ACCOUNT, "nats": nats}


class Callout:
    """Decides one authorization request; `answer` is the bus handler."""

    def __init__(self, cfg: CalloutConfig, issuer_seed: str, certificates: list[Certificate], launched: Launched
                 ) -> None:
        self.cfg = cfg
        self._seed = issuer_seed
        self._certificates = certificates
        self._launched = launched

    def __repr__(self) -> str:
        return f"Callout(issuer={account_public_key(self._seed)}, seed=***)"

    async def answer(self, subject: str, data: bytes) -> bytes | None:
        try:
            request = _request(data, self.cfg.clock_skew)
        except jwt.InvalidJwt as exc:  # not from a server: nobody to answer
            log.warning("callout_request_invalid", subject=subject, size=len(data), error=str(exc))
            return None
        nats = request["nats"]
        user_nkey, server = str(nats.get("user_nkey", "")), nats.get("server_id") or {}
        client = nats.get("client_info") or {}
        response: dict[str, Any] = {"sub": user_nkey, "aud": str(server.get("id", "")),
                                    "nats": {"type": "authorization_response", "version": 2}}
        try:
            async with asyncio.timeout(self.cfg.timeout):
                agent_id = await self._decide(nats.get("connect_opts") or {})
        except Refusal as refusal:
            response["nats"]["error"] = str(refusal)
            log.warning("callout_refused", reason=str(refusal), host=client.get("host"), client=client.get("name"),
                        client_id=client.get("id"), server=server.get("name"))
        except TimeoutError:
            response["nats"]["error"] = f"the controller could not decide within {self.cfg.timeout} s"
            log.warning("callout_refused", reason="timeout", host=client.get("host"), client=client.get("name"),
                        server=server.get("name"))
        else:
            response["nats"]["jwt"] = jwt.encode(user_claims(user_nkey, agent_id), self._seed)
            log.info("callout_granted", agent_id=agent_id, host=client.get("host"), server=server.get("name"))
        return jwt.encode(response, self._seed).encode()

    async def _decide(self, connect: dict[str, Any]) -> str:
        """The agent id the client is granted, or Refusal."""
        token = connect.get("auth_token")
        if not isinstance(token, str) or not token:
            given = sorted(k for k in ("user", "nkey", "jwt") if connect.get(k))
            raise Refusal("no token: an instance connects with its identity document; other identities need "
                          "credentials the server knows" + (f" (it gave {', '.join(given)})" if given else ""))
        if not instancedoc.is_token(token):
            raise Refusal("the token is not an instance identity document")
        try:
            document = instancedoc.verify(token, self._certificates)
        except instancedoc.Refused as exc:
            raise Refusal(str(exc)) from None
        cfg = self.cfg
        if cfg.account_ids and document.account_id not in cfg.account_ids:
            raise Refusal(f"instance {document.instance_id} is in AWS account {document.account_id}, not one allowed")
        if cfg.regions and document.region not in cfg.regions:
            raise Refusal(f"instance {document.instance_id} is in region {document.region}, not one allowed")
        state = await self._launched.state(document.instance_id)
        if state is None:
            raise Refusal(f"instance {document.instance_id} was not launched by this cluster")
        if state in GONE:
            raise Refusal(f"instance {document.instance_id} is {state}")
        return document.instance_id


def _request(data: bytes, leeway: float) -> dict[str, Any]:
    """The claims of an authorization request, signed by a server (its key is `N...`); `leeway`: seconds of clock
    skew forgiven on its expiry."""
    try:
        claims = jwt.decode(data.decode(), leeway=leeway)
    except UnicodeDecodeError:
        raise jwt.InvalidJwt("not text") from None
    nats = claims.get("nats")
    if not str(claims.get("iss", "")).startswith("N") or claims.get("aud") != REQUEST_AUDIENCE \
            or not isinstance(nats, dict) or nats.get("type") != "authorization_request":
        raise jwt.InvalidJwt("not an authorization request from a NATS server")
    return claims


def open_callout(cfg: CalloutConfig, issuer: Path, describe: Callable[[], Awaitable[Iterable[Observed]]]) -> Callout:
    """The callout from its configuration (`read_keys`), the launched instances from `describe`."""
    seed, certificates = read_keys(cfg, issuer)
    return Callout(cfg, seed, certificates, Launched(describe, cfg.records_ttl, cfg.refresh_min))


def read_keys(cfg: CalloutConfig, issuer: Path) -> tuple[str, list[Certificate]]:
    """The issuer's seed from `issuer` and AWS's certificates from their files; ValueError naming the field or the
    file when one cannot be read (the controller checks this before it starts, and says it in one line)."""
    if not cfg.aws_certificates:
        raise ValueError("callout.aws_certificates names no certificate: no instance identity could be verified")
    certificates = []
    for path in cfg.aws_certificates:
        try:
            certificates.append(instancedoc.load_certificate(Path(path)))
        except (OSError, ValueError) as exc:
            raise ValueError(f"callout.aws_certificates: cannot read a PEM certificate from {path}: {exc}") from None
    try:
        seed = read_issuer(issuer)
    except OSError as exc:
        raise ValueError(f"callout: cannot read the issuer's seed from {issuer} ({exc.strerror}): make it with "
                         "incl.auth.callout.ensure_issuer (its public key is the servers' issuer)") from None
    return seed, certificates


async def serve(bus: Bus, callout: Callout) -> None:
    """Answer the server's authorization requests (in the queue group of every controller) until cancelled."""
    stop = await bus.serve(SUBJECT, QUEUE, callout.answer)
    log.info("callout_serving", subject=SUBJECT)
    try:
        await asyncio.Event().wait()
    finally:
        await stop()
