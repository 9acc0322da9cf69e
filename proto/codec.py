"""MessagePack encoding and typed decoding. A message that fails to decode raises `DecodeError`."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from incl.proto import PROTOCOL_VERSION
from incl.proto.errors import DecodeError, VersionMismatch

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()


def encode(msg: Any) -> bytes:
    return _encoder.encode(msg)


class Decoder(Generic[T]):
    """Decodes one type (or tagged union) and checks the protocol version of requests."""

    def __init__(self, type_: Any) -> None:
        self._decoder = msgspec.msgpack.Decoder(type_)

    def decode(self, data: bytes) -> T:
        try:
            msg: T = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise DecodeError(f"undecodable message: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a decoder must never raise anything but DecodeError
            raise DecodeError(f"undecodable message: {type(exc).__name__}: {exc}") from None
        meta = getattr(msg, "meta", None)
        if meta is not None and meta.version != PROTOCOL_VERSION:
            raise VersionMismatch(f"protocol version {meta.version}, this side speaks {PROTOCOL_VERSION}")
        return msg
