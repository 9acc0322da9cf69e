"""A job's log as the file a user downloads: what the job printed, stdout and stderr in the order they were
written, byte for byte, with `--- attempt N ---` where a new attempt begins and `[rank K] ` before each line of
a multi-node job. INCL's own notes (setup, why a start failed) are left out: the page shows them, the file
holds the job's output only, as `incl logs` prints it to stdout."""

from __future__ import annotations

from incl.proto.messages import LogBatch, Stream


class LogText:
    """Turns batches, in order, into the file's bytes, one batch at a time (the log is never whole in memory)."""

    def __init__(self, ranks: bool) -> None:
        self._ranks = ranks
        self._attempt: int | None = None
        self._open: set[int] = set()  # ranks whose last piece did not end its line

    def chunk(self, batch: LogBatch) -> bytes:
        out = bytearray()
        if self._attempt is not None and batch.attempt != self._attempt:
            if self._open:
                out += b"\n"
                self._open.clear()
            out += f"--- attempt {batch.attempt} ---\n".encode()
        self._attempt = batch.attempt
        for line in batch.lines:
            if line.stream == Stream.SYSTEM:
                continue
            if self._ranks and batch.rank not in self._open:
                out += f"[rank {batch.rank}] ".encode()
            out += line.data
            if line.partial:
                self._open.add(batch.rank)
            else:
                out += b"\n"
                self._open.discard(batch.rank)
        return bytes(out)
