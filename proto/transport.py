"""Request-reply over NATS with the protocol's codec: one call, one typed reply or one typed exception."""

from __future__ import annotations

from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from incl.proto import errors
from incl.proto.codec import Decoder, encode
from incl.proto.messages import ErrorReply, Reply, Request

R = TypeVar("R", bound=Reply)

_decoders: dict[Any, Decoder[Any]] = {}


def _decoder(reply_type: type[R]) -> Decoder[R | ErrorReply]:
    if reply_type not in _decoders:
        _decoders[reply_type] = Decoder(reply_type | ErrorReply)
    return _decoders[reply_type]


async def connect(url: str, name: str, *, connect_timeout: float, reconnect_wait: float,
                  max_reconnect_attempts: int = -1, **kwargs: Any) -> Client:
    """A client that keeps reconnecting for ever (daemons) unless told otherwise (the CLI)."""
    return await nats.connect(
        url,
        name=name,
        connect_timeout=connect_timeout,
        reconnect_time_wait=reconnect_wait,
        max_reconnect_attempts=max_reconnect_attempts,
        allow_reconnect=max_reconnect_attempts != 0,
        **kwargs,
    )


async def request(nc: Client, subject: str, req: Request, reply_type: type[R], timeout: float) -> R:
    """Send `req`, return the reply; an ErrorReply becomes its exception, silence becomes Unavailable."""
    try:
        msg = await nc.request(subject, encode(req), timeout=timeout)
    except NoRespondersError:
        raise errors.NoResponders(f"nothing is serving {subject}") from None
    except NatsTimeout:
        raise errors.Unavailable(f"no reply on {subject} within {timeout:g}s") from None
    reply = _decoder(reply_type).decode(msg.data)
    if isinstance(reply, ErrorReply):
        raise errors.from_code(reply.code, reply.message, reply.field)
    return reply


def error_reply(exc: errors.InclError) -> bytes:
    return encode(ErrorReply(code=exc.code, message=exc.message, field=exc.field))
