"""The dead-letter stream, read for `incl admin dead-letters`: the newest parked messages, data cut to a preview."""

from __future__ import annotations

from msgspec import structs
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from incl.proto import subjects
from incl.proto.codec import Decoder
from incl.proto.errors import DecodeError
from incl.proto.messages import DeadLetter, DeadLetterView, ListDeadLettersReply

PREVIEW_BYTES = 256
MAX_LISTED = 100

_decoder: Decoder[DeadLetter] = Decoder(DeadLetter)


async def newest(js: JetStreamContext, limit: int) -> ListDeadLettersReply:
    info = await js.stream_info(subjects.DEAD_STREAM)
    first, last = info.state.first_seq, info.state.last_seq
    views: list[DeadLetterView] = []
    seq = last
    while seq >= first and seq > 0 and len(views) < min(max(limit, 1), MAX_LISTED):
        try:
            msg = await js.get_msg(subjects.DEAD_STREAM, seq)
            letter = _decoder.decode(msg.data or b"")
        except (NotFoundError, DecodeError):  # deleted by a limit meanwhile, or not ours
            seq -= 1
            continue
        views.append(DeadLetterView(seq=seq, letter=structs.replace(letter, data=letter.data[:PREVIEW_BYTES])))
        seq -= 1
    return ListDeadLettersReply(letters=views, total=info.state.messages)
