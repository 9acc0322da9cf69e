"""The dead-letter stream, read for `incl admin dead-letters`: the newest parked messages, data cut to a preview."""

from __future__ import annotations

from msgspec import structs

from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.codec import Decoder
from incl.proto.errors import DecodeError
from incl.proto.messages import DeadLetter, DeadLetterView, ListDeadLettersReply

PREVIEW_BYTES = 256
MAX_LISTED = 100

_decoder: Decoder[DeadLetter] = Decoder(DeadLetter)


async def newest(bus: Bus, limit: int) -> ListDeadLettersReply:
    state = await bus.state(subjects.DEAD_STREAM)
    first, last = state.first_seq, state.last_seq
    views: list[DeadLetterView] = []
    seq = last
    while seq >= first and seq > 0 and len(views) < min(max(limit, 1), MAX_LISTED):
        data = await bus.get(subjects.DEAD_STREAM, seq)
        try:
            letter = _decoder.decode(data or b"")
        except DecodeError:  # deleted by a limit meanwhile, or not ours
            seq -= 1
            continue
        views.append(DeadLetterView(seq=seq, letter=structs.replace(letter, data=letter.data[:PREVIEW_BYTES])))
        seq -= 1
    return ListDeadLettersReply(letters=views, total=state.messages)
