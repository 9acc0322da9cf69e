"""Records written by an older controller, read by this one.

Until issue 11 a job's `notify`, `gpu_idle` and `hpo` were stored as the user wrote them (a channel name, a dict
with durations as text, ...). They are typed now; an old record is read by running its spec through the spec
loader again, which accepts every form a user may write, and so every form an old record holds.
"""

from __future__ import annotations

from typing import Any

import msgspec

from incl.proto.codec import Decoder
from incl.proto.messages import Job
from incl.proto.spec import load_spec

_JOB: Decoder[Job] = Decoder(Job)


def upgrade_job(data: bytes) -> Job:
    """The job in `data` with its spec re-read; raises (DecodeError, SpecInvalid) when that fails too."""
    raw: Any = msgspec.msgpack.decode(data)
    if not isinstance(raw, dict) or not isinstance(raw.get("spec"), dict):
        raise ValueError("not a job record")
    spec = {k: v for k, v in raw["spec"].items() if v is not None}
    raw["spec"] = msgspec.to_builtins(load_spec(spec))
    return _JOB.decode(msgspec.msgpack.encode(raw))
