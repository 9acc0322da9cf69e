"""The one connection to NATS every INCL part uses: request/reply, serving, durable publish, streams, buckets.

Nothing outside `incl.bus` imports `nats`: the parts speak to each other through this module's `Bus`, so
credentials and TLS (and any change of transport) are added here once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import json
import logging
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import nats
import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, FetchTimeoutError, NotFoundError

from incl.auth.keys import Creds, read_creds
from incl.bus.follow import PULL_BATCH, Followed, Follower, to_end
from incl.bus.kv import Bucket
from incl.proto import errors, subjects
from incl.proto.codec import Decoder, encode
from incl.proto.messages import ErrorReply, Reply, Request

log = structlog.get_logger()


def _not_eof_noise(record: logging.LogRecord) -> bool:
    """asyncio warns at each TLS connection's end that the stream protocol nats-py reads through (the standard
    library's own) asks to keep the socket half open, which TLS cannot do: harmless, and it would follow every CLI
    command over TLS."""
    return not record.getMessage().startswith("returning true from eof_received() has no effect when using ssl")


logging.getLogger("asyncio").addFilter(_not_eof_noise)

R = TypeVar("R", bound=Reply)
T = TypeVar("T")

_decoders: dict[Any, Decoder[Any]] = {}


def _decoder(reply_type: type[R]) -> Decoder[R | ErrorReply]:
    if reply_type not in _decoders:
        _decoders[reply_type] = Decoder(reply_type | ErrorReply)
    return _decoders[reply_type]


def error_reply(exc: errors.InclError) -> bytes:
    return encode(ErrorReply(code=exc.code, message=exc.message, field=exc.field))


@dataclass(frozen=True)
class StreamState:
    messages: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True)
class Retention:
    oldest: float | None  # unix time the stream's oldest message was stored; None: it holds none
    max_age: float | None  # seconds
    max_bytes: int | None


class Delivery:
    """One message from a durable consumer: its subject and data, and the ways to settle it."""

    def __init__(self, msg: Msg) -> None:
        self._msg = msg
        self.subject = msg.subject
        self.data = msg.data

    async def ack(self) -> None:
        await self._msg.ack()

    async def term(self) -> None:
        """Never deliver it again."""
        await self._msg.term()


class Pull:
    """A durable pull consumer: batches of deliveries; an empty list when nothing came within the timeout."""

    def __init__(self, sub: JetStreamContext.PullSubscription) -> None:
        self._sub = sub

    async def fetch(self, batch: int, timeout: float) -> list[Delivery]:
        try:
            return [Delivery(m) for m in await self._sub.fetch(batch, timeout=timeout)]
        except (TimeoutError, FetchTimeoutError):
            return []


Handler = Callable[[str, bytes], Awaitable[bytes | None]]


class Stop(Protocol):
    """Stops serving a subject (`Bus.serve`): at once, or with `drain` once what was received is answered."""
    async def __call__(self, drain: bool = False) -> None: ...


class _Batches:
    """Pull requests on one consumer whose messages a subscription callback gathers (for `Bus.read_subject`)."""

    def __init__(self, nc: Nats, next_subject: str, until: int | None = None) -> None:
        self._nc, self._next, self._until = nc, next_subject, until
        self._got: list[Stored] = []
        self._want = 0
        self._short = False
        self._past = False  # a message past `until` came: nothing more is wanted
        self._filled = asyncio.Event()

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if "Status" in headers:  # 404/408: the consumer had fewer than asked (a purge, a restart): ask again
            self._short = True
            self._filled.set()
            return
        # the ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<...> (9 tokens), or with
        # <domain>.<account hash> after ACK (12 tokens)
        tokens = msg.reply.split(".")
        seq = int(tokens[5] if len(tokens) == 9 else tokens[7])
        if self._past or (self._until is not None and seq > self._until):
            self._past = True
            self._filled.set()
            return
        self._got.append(Stored(seq=seq, msg_id=headers.get("Nats-Msg-Id"), data=bytes(msg.data)))
        if len(self._got) >= self._want:
            self._filled.set()

    async def read(self, count: int, out: list[Stored], batch: int, timeout: float) -> None:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox, cb=self._on_msg, pending_msgs_limit=2 * batch + 16,
                                       pending_bytes_limit=-1)
        try:
            while len(self._got) < count and not self._past:
                self._want = min(len(self._got) + batch, count)
                self._short = False
                self._filled.clear()
                request = {"batch": self._want - len(self._got), "no_wait": True}
                await self._nc.publish(self._next, json.dumps(request).encode(), reply=inbox)
                try:
                    await asyncio.wait_for(self._filled.wait(), timeout)
                except TimeoutError:
                    raise NatsTimeout from None
                if self._short and not self._past and len(self._got) < self._want:
                    raise NatsTimeout  # transient: the caller's retry reads again from where it stands
        finally:
            await sub.unsubscribe()
        out.extend(self._got)

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code: the subject's last sequence was not the one expected


class WrongLastSequence(Exception):
    """A conditional publish found another message last on its subject: another writer appended first."""


@dataclass(frozen=True)
class Appended:
    """Where a conditional publish was stored; `duplicate`: its msg id was already stored (a retry), at `seq`."""
    seq: int
    duplicate: bool


@dataclass(frozen=True)
class Stored:
    """A message as its stream holds it: stream sequence, its Nats-Msg-Id (None if it had none), its data."""
    seq: int
    msg_id: str | None
    data: bytes


class Refusals:
    """Permission violations the server reported, matched to the requests waiting on their subjects.

    The server answers a refused publish with an `-ERR` that names only the subject, after the fact; without this a
    refused request would look like a controller that never answers (a timeout). Each is also logged, as one line
    that names the subject (never the credentials)."""

    PREFIX = "permissions violation for publish to "

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[str]]] = {}
        self.recent: collections.deque[str] = collections.deque(maxlen=64)  # the newest refusals, as the server said

    def report(self, error: str) -> None:
        text = error.removeprefix("nats: ").strip("'")
        self.recent.append(text)
        log.warning("nats_refused", error=text)
        lower = text.lower()  # nats-py lowers the server's whole line, the subject in it too
        if lower.startswith(self.PREFIX):
            subject = lower[len(self.PREFIX):].strip().strip('"')
            for waiter in self._waiting.get(subject, ()):
                if not waiter.done():
                    waiter.set_result(text)

    @contextlib.contextmanager
    def watch(self, subject: str) -> Iterator[asyncio.Future[str]]:
        """A future that gets the server's refusal of a publish to `subject` made while it is watched."""
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        key = subject.lower()
        self._waiting.setdefault(key, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiting = self._waiting[key]
            waiting.discard(waiter)
            if not waiting:
                del self._waiting[key]


class Bus:
    """A live NATS connection with JetStream. Make one with `connect`; close it with `close` (or `async with`)."""

    def __init__(self, nc: Nats, request_timeout: float, refusals: Refusals | None = None) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=request_timeout)
        self.request_timeout = request_timeout
        self._refusals = refusals or Refusals()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._nc.close()

    @property
    def refused(self) -> list[str]:
        """What the server refused this connection lately (publishes, subscriptions), newest last, as it said it:
        `permissions violation for publish to "<subject>"` (nats-py lowers the line)."""
        return list(self._refusals.recent)

    @property
    def client_ip(self) -> str | None:
        """This client's address as the server saw it connect (from the server's INFO)."""
        return self._nc.client_ip

    @property
    def max_payload(self) -> int:
        """The largest message the server takes."""
        return int(self._nc.max_payload)

    # --- request / reply ----------------------------------------------------------------------------------

    async def request(self, subject: str, req: Request, reply_type: type[R], timeout: float) -> R:
        """Send `req`, return the reply; an ErrorReply becomes its exception, silence becomes Unavailable
        (NoResponders when NATS says nothing serves the subject)."""
        data = await self.request_raw(subject, encode(req), timeout)
        reply = _decoder(reply_type).decode(data)
        if isinstance(reply, ErrorReply):
            raise errors.from_code(reply.code, reply.message, reply.field)
        return reply

    async def refusable(self, subject: str, call: Awaitable[T]) -> T:
        """`call`, a request on `subject` made some other way (a JetStream API call); NotAllowed at once if the
        server refuses it, rather than its timeout."""
        with self._refusals.watch(subject) as refused:
            asked = asyncio.ensure_future(call)
            try:
                await asyncio.wait((asked, refused), return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not asked.done():
                    asked.cancel()
            if refused.done() and not (asked.done() and not asked.cancelled() and asked.exception() is None):
                raise errors.NotAllowed(f"not allowed: the NATS server refused these credentials a request on "
                                        f"{subject}")
            return asked.result()

    async def request_raw(self, subject: str, data: bytes, timeout: float) -> bytes:
        """The reply's data; NotAllowed at once if the server refuses this connection to publish on `subject`."""
        try:
            msg = await self.refusable(subject, self._nc.request(subject, data, timeout=timeout))
        except NoRespondersError:
            raise errors.NoResponders(f"nothing is serving {subject}") from None
        except NatsTimeout:
            raise errors.Unavailable(f"no reply on {subject} within {timeout:g}s") from None
        return bytes(msg.data)

    async def serve(self, subject: str, queue: str, handler: Handler) -> Stop:
        """Answer requests on `subject` (wildcards allowed) with `handler(subject, data)`; a reply over the payload
        limit is answered with an error saying so, and a reply that cannot be sent is dropped (the requester
        went away). The handler must not raise. Returns what stops serving (with `drain`, once the requests
        already received are answered)."""
        limit = self.max_payload

        async def on_msg(msg: Msg) -> None:
            try:
                reply = await handler(msg.subject, msg.data)
            except asyncio.CancelledError:
                # Raised by something the handler awaited (a worker's future cancelled under it), not by a cancel
                # of this task: nats-py would end the subscription's loop on it, and nothing would be served again.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.error("handler_interrupted", subject=msg.subject)
                reply = error_reply(errors.Unavailable("the request was interrupted; try again"))
            except Exception:  # the handler must not raise; if it does, one request fails, never the serving
                log.exception("handler_failed", subject=msg.subject)
                reply = error_reply(errors.InclError("internal error"))
            if reply is None or not msg.reply:
                return
            if len(reply) > limit:
                log.warning("reply_too_large", subject=msg.subject, size=len(reply), limit=limit)
                reply = error_reply(errors.InclError(f"the reply ({len(reply)} bytes) exceeds the NATS payload "
                                                     f"limit ({limit} bytes); narrow the query"))
            try:
                await msg.respond(reply)
            except Exception as exc:  # noqa: BLE001 - the requester went away, or the connection is down
                log.debug("reply_failed", subject=msg.subject, error=repr(exc))

        sub = await self._nc.subscribe(subject, queue=queue, cb=on_msg)

        async def stop(drain: bool = False) -> None:
            with contextlib.suppress(nats.errors.Error):  # the connection closed first: nothing to unsubscribe
                await (sub.drain() if drain else sub.unsubscribe())  # type: ignore[no-untyped-call]  # nats-py: drain untyped

        return stop

    async def publish(self, subject: str, data: bytes) -> None:
        """A plain (not durable) publish."""
        await self._nc.publish(subject, data)
        await self._nc.flush(timeout=self.request_timeout)  # type: ignore[arg-type]  # nats-py says int; it waits float seconds

    # --- streams ------------------------------------------------------------------------------------------

    async def publish_durable(self, subject: str, data: bytes, *, msg_id: str | None = None,
                              timeout: float | None = None) -> None:
        """Store `data` in the stream that holds `subject`; with `msg_id`, a retry within the stream's duplicate
        window is stored once. One try: callers wrap it in `incl.bus.retry.forever`."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        await self._js.publish(subject, data, headers=headers, timeout=timeout or self.request_timeout)

    async def publish_after(self, subject: str, data: bytes, *, last_seq: int, msg_id: str,
                            timeout: float) -> Appended:
        """Store `data` on `subject` only if the subject's newest message is `last_seq` (0: it has none), so that
        appends of two writers never interleave unseen; a retry with the same `msg_id` within the stream's duplicate
        window is stored once. Raises WrongLastSequence when another message came first. One try."""
        headers = {"Nats-Msg-Id": msg_id, "Nats-Expected-Last-Subject-Sequence": str(last_seq)}
        try:
            ack = await self._js.publish(subject, data, headers=headers, timeout=timeout)
        except BadRequestError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise WrongLastSequence(subject) from None
            raise
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def last_seq(self, stream: str, subject: str, timeout: float, direct: bool = False) -> int:
        """The stream sequence of the newest message on `subject`, 0 if it has none: one request, the cheap way to
        learn whether a reader is behind. `direct`: a direct get whose subject names `subject` (what a reader whose
        rights are scoped by subject may ask; in a cluster, any replica answers it)."""
        if direct:
            try:
                got = await self.refusable(f"$JS.API.DIRECT.GET.{stream}.{subject}",
                                           self._js.get_last_msg(stream, subject, direct=True))
            except NotFoundError:
                return 0
            return int(got.seq or 0)
        request = json.dumps({"last_by_subj": subject}).encode()
        try:
            msg = await self._nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", request, timeout=timeout)
        except NoRespondersError:
            raise nats.js.errors.NoStreamResponseError from None
        reply = json.loads(msg.data)
        error = reply.get("error")
        if error is None:
            return int(reply["message"]["seq"])
        if error.get("code") == 404 and error.get("err_code") == 10037:  # no message found: the subject is empty
            return 0
        nats.js.errors.APIError.from_error(error)  # raises the error's own class (503: the stream is unavailable)
        raise AssertionError("unreachable")

    async def read_subject(self, stream: str, subject: str, from_seq: int, *, batch: int, timeout: float,
                           inactive: float, to_seq: int | None = None) -> list[Stored]:
        """Every message on `subject` (wildcards allowed) from stream sequence `from_seq` on (up to `to_seq`), in
        order, through one short-lived pull consumer: one request creates it (and says how many there are), then one
        request per `batch` messages, gathered by a callback (nats-py's `fetch` awaits each message with its own
        timer: too slow for a replay). `inactive`: how soon the server drops the consumer should this reader vanish
        before deleting it."""
        name = self._nc.new_inbox().rsplit(".", 1)[-1]
        config = api.ConsumerConfig(name=name, filter_subject=subject, ack_policy=api.AckPolicy.NONE,
                                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=max(from_seq, 1),
                                    inactive_threshold=inactive, mem_storage=True, num_replicas=1)
        info = await self._js.add_consumer(stream, config, timeout=timeout)
        out: list[Stored] = []
        try:
            remaining = int(info.num_pending or 0)
            if remaining:
                await _Batches(self._nc, f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", to_seq).read(
                    remaining, out, batch, timeout)
        finally:  # without waiting for the reply: `inactive` removes it anyway should this be lost
            await self._nc.publish(f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b"")
        return out

    async def seq_at(self, stream: str, ts: float, timeout: float) -> int | None:
        """The sequence of the first message `stream` stored at or after unix time `ts`; None if none is that new."""
        at = datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")
        msg = await self._nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", json.dumps({"start_time": at}).encode(),
                                     timeout=timeout)
        reply = json.loads(msg.data)
        error = reply.get("error")
        if error is None:
            return int(reply["message"]["seq"])
        if error.get("code") == 404 and error.get("err_code") == 10037:  # no message found
            return None
        nats.js.errors.APIError.from_error(error)  # raises the error's own class
        raise AssertionError("unreachable")

    async def pull(self, stream: str, subject: str, durable: str, *, ack_wait: float) -> Pull:
        """A durable consumer of `subject` in `stream`, redelivering what is not acked within `ack_wait`."""
        sub = await self._js.pull_subscribe(subject, durable=durable, stream=stream,
                                            config=api.ConsumerConfig(ack_wait=ack_wait, max_deliver=-1))
        return Pull(sub)

    async def last(self, stream: str, subject: str) -> bytes | None:
        """The newest message on `subject`, or None if it has none (or the stream does not exist)."""
        try:  # a direct get whose subject names the subject read: permissions can scope it (the streams allow it)
            msg = await self.refusable(f"$JS.API.DIRECT.GET.{stream}.{subject}",
                                       self._js.get_last_msg(stream, subject, direct=True))
        except (NotFoundError, NoRespondersError):  # nothing on the subject / no such stream
            return None
        return bytes(msg.data or b"")

    async def get(self, stream: str, seq: int) -> bytes | None:
        try:
            msg = await self._js.get_msg(stream, seq)
        except NotFoundError:
            return None
        return bytes(msg.data or b"")

    async def retention(self, stream: str) -> Retention:
        """What `stream` still holds and what it keeps: when its oldest message was stored, and its limits."""
        info = await self._js.stream_info(stream)
        oldest = None
        if info.state.messages:
            with contextlib.suppress(NotFoundError):  # the oldest was just removed: the next one is newer still
                stored = (await self._js.get_msg(stream, info.state.first_seq)).time
                oldest = stored.timestamp() if stored is not None else None
        return Retention(oldest=oldest, max_age=info.config.max_age or None,
                         max_bytes=info.config.max_bytes if (info.config.max_bytes or -1) > 0 else None)

    async def state(self, stream: str) -> StreamState:
        info = await self._js.stream_info(stream)
        return StreamState(messages=info.state.messages, first_seq=info.state.first_seq, last_seq=info.state.last_seq)

    async def purge(self, stream: str) -> None:
        await self._js.purge_stream(stream)

    async def read_all(self, stream: str, subject: str, poll: float) -> AsyncGenerator[bytes, None]:
        """Every message on `subject` of `stream` now, in order (what `follow` reads, up to the stream's end)."""
        async with contextlib.aclosing(to_end(self.follow(stream, subject, poll))) as data:
            async for item in data:
                yield item

    async def follow(self, stream: str, subject: str, poll: float, *, from_seq: int = 1,
                     batch: int = PULL_BATCH) -> AsyncGenerator[Followed | None, None]:
        """Every message on `subject` of `stream` from stream sequence `from_seq` (the first) on, in order; None
        each `poll` seconds with nothing new. Ends (with nothing) if the stream does not exist. `batch`: messages
        per pull request. (`incl.bus.follow`: scoped by subject.)"""
        follower = Follower(self._nc, self._js, stream, subject, poll=poll, timeout=self.request_timeout,
                            guard=self.refusable, from_seq=from_seq, batch=batch)
        async with contextlib.aclosing(follower.run()) as items:
            async for item in items:
                yield item

    # --- buckets ------------------------------------------------------------------------------------------

    async def bucket(self, name: str) -> Bucket:
        """An existing bucket (the controller creates them all; see `incl.bus.streams.ensure_buckets`)."""
        return Bucket(await self._js.key_value(name))

    @property
    def jetstream(self) -> JetStreamContext:
        """For `incl.bus.streams` only: stream and bucket configuration."""
        return self._js


Servers = str | list[str]  # one URL, several separated by commas (as NATS clients take them), or a list


def server_list(servers: Servers) -> list[str]:
    """Each URL in `servers`, in order, without blanks; ValueError if there is none."""
    parts = servers.split(",") if isinstance(servers, str) else servers
    urls = [url.strip() for url in parts if url.strip()]
    if not urls:
        raise ValueError(f"no NATS URL in {servers!r}")
    return urls


def masked(servers: Servers) -> str:
    """The URLs for a log line or a message: any user:password or token in them shown as ***."""
    shown = []
    for url in server_list(servers):
        scheme, sep, rest = url.rpartition("://")
        authority, slash, path = rest.partition("/")
        _, at, host = authority.rpartition("@")
        shown.append(f"{scheme}{sep}{'***@' if at else ''}{host}{slash}{path}")
    return ",".join(shown)


def _inbox_of(kind: str | None, name: str | None) -> str | None:
    """The reply inbox the server lets this identity subscribe to (None: the default, `_INBOX`)."""
    if name is None:
        return None
    if kind == "user":
        return subjects.user_inbox(name)
    if kind == "agent":
        return subjects.agent_inbox(name)
    return None


def _abort(nc: Nats) -> None:
    """Drop the connection's socket at once."""
    writer = getattr(nc._transport, "_bare_io_writer", None)  # nats-py has no public handle on it
    if writer is not None:
        writer.transport.abort()


class AuthFailed(errors.InclError):
    """The server refused the credentials at connect (none given, a wrong key, or one revoked)."""


class TlsFailed(errors.InclError):
    """TLS failed at connect: the server's certificate did not verify against the CA, or a `tls://` server did not
    speak TLS. Retrying cannot help, so daemons end on it as on AuthFailed."""


def tls_context(ca: Path | None) -> ssl.SSLContext:
    """Verify the server's certificate chain against the CA in `ca` (None: the system's CAs) and its host name."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsFailed(f"TLS: cannot read a CA certificate from {ca}: {exc}") from None


_NOT_SIGNED = {18, 19, 20, 21}  # OpenSSL: self-signed leaf, self-signed in chain, no local issuer, cannot verify leaf


def _tls_refusal(exc: ssl.SSLError, servers: Servers, ca: Path | None) -> str:
    """One line that says which server, which CA file, and what OpenSSL said."""
    code = getattr(exc, "verify_code", None)
    said = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    where = f"the server's certificate at {masked(servers)}"
    trusted = (f"the CA in {ca}" if ca is not None else
               "a CA this client trusts (no CA file given: `incl login --ca FILE`, $INCL_TLS_CA, or tls_ca: in a "
               "daemon's config)")
    if code in _NOT_SIGNED:
        return f"TLS: {where} is not signed by {trusted} (certificate verify failed: {said})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: {where} does not verify against {trusted} (certificate verify failed: {said})"
    return f"TLS: the handshake with {masked(servers)} failed ({said})"


async def connect(servers: Servers, name: str, *, connect_timeout: float, reconnect_wait: float, request_timeout: float,
                  max_reconnect_attempts: int = -1,
                  on_disconnect: Callable[[], Awaitable[None]] | None = None,
                  on_reconnect: Callable[[], Awaitable[None]] | None = None,
                  quiet: bool = False, creds: Path | Creds | None = None, inbox_prefix: str | None = None,
                  tls_ca: Path | None = None, token: str | None = None) -> Bus:
    """The one connect path, to any of `servers` (the nodes of a cluster; nats-py also learns the others from the
    one it reaches, and reconnects across them all). Daemons keep reconnecting for ever; the CLI
    (`max_reconnect_attempts=0`) does not, and with `quiet` nats-py's own tracebacks for a failed connect are not
    printed. `creds`: the identity's credential file (`incl.auth.keys`); `inbox_prefix`: where its replies come
    (the server lets an identity subscribe only to its own); `token`: a connect token instead (an EC2 agent's
    instance identity, which the controllers' auth callout checks, `incl.auth.callout`). A server that refuses the
    credentials raises
    AuthFailed at once, for daemons too: retrying the same key cannot help.

    TLS: a server that requires it is verified against the CA certificate in `tls_ca` (None: the system's CAs),
    host name included; a `tls://` URL also requires that the server speak TLS. A certificate that does not verify
    raises TlsFailed at once, as a refusal does."""
    refusals = Refusals()
    refused = asyncio.Event()
    tls_failed: list[str] = []

    async def on_error(exc: Exception) -> None:
        """One line per error, no traceback (nats-py's default); a permission violation goes to the request
        waiting on it."""
        text = str(exc)
        if isinstance(exc, ssl.SSLError):
            tls_failed.append(_tls_refusal(exc, servers, tls_ca))
            refused.set()
            if not quiet:  # the caller reports TlsFailed in one line of its own
                log.warning("nats_tls_failed", error=tls_failed[-1])
            return
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in text.lower():
            refused.set()
            if not quiet:  # the caller reports AuthFailed in one line of its own
                log.warning("nats_auth_failed", servers=masked(servers), creds=str(creds) if creds else None)
            return
        if "permissions violation" in text.lower():
            refusals.report(text)
        elif not quiet:
            log.warning("nats_error", error=repr(exc), servers=masked(servers))

    urls = server_list(servers)
    kwargs: dict[str, Any] = {"error_cb": on_error}
    if tls_ca is not None:  # else nats-py verifies against the system's CAs, should the server ask for TLS
        kwargs["tls"] = tls_context(tls_ca)
    if on_disconnect is not None:
        kwargs["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        kwargs["reconnected_cb"] = on_reconnect
    if creds is not None:
        held = creds if isinstance(creds, Creds) else read_creds(creds)
        kwargs["nkeys_seed_str"] = held.seed
        inbox_prefix = inbox_prefix or _inbox_of(held.kind, held.name)
    if token is not None:
        kwargs["token"] = token
    if inbox_prefix is not None:
        kwargs["inbox_prefix"] = inbox_prefix
    # nats-py's `connect` says int seconds; it waits float seconds. Passed as kwargs, as `nats.connect` passes them.
    kwargs.update(connect_timeout=connect_timeout, reconnect_time_wait=reconnect_wait)
    nc = Nats()  # made here, not by `nats.connect`, so that a connect abandoned on a refusal can still be closed
    connecting = asyncio.ensure_future(nc.connect(
        servers=urls,
        name=name,
        max_reconnect_attempts=max_reconnect_attempts if max_reconnect_attempts else 1,
        allow_reconnect=max_reconnect_attempts != 0,
        **kwargs,
    ))
    # A daemon's first connect retries for ever; a refusal of its credentials ends it at once.
    watching = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait((connecting, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
    failed = connecting.cancelled() or connecting.exception() is not None
    if tls_failed:  # before CONNECT: nothing of nats-py's runs yet but the socket, which its close would wait on
        _abort(nc)  # for ever (the plain stream a failed handshake took over never reports closing)
        raise TlsFailed(tls_failed[-1])
    if refused.is_set() or failed:
        with contextlib.suppress(Exception):  # its socket, should the cancel have left it open
            await nc.close()
    if refused.is_set() or isinstance(connecting.exception() if not connecting.cancelled() else None,
                                      nats.errors.AuthorizationError):
        raise AuthFailed(f"authentication failed: the NATS server at {masked(servers)} refused "
                         + (f"the credentials in {creds}" if creds else "this instance's identity document" if token
                            else "a connection without credentials")
                         + "; `incl login --creds FILE` stores yours")
    connecting.result()  # any other failure to connect, raised as nats-py raised it
    if any(url.startswith("tls://") for url in urls) and not nc._server_info.get("tls_required"):
        await nc.close()
        raise TlsFailed(f"TLS: the server at {masked(servers)} does not speak TLS, but the URL asks for it (tls://)")
    return Bus(nc, request_timeout, refusals)
