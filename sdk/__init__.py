"""INCL's job-side SDK: `incl.log(...)` and `incl.params()`. Standard library only, so it works in any image.

Inside an INCL job the agent sets `INCL_METRICS_SOCKET` to a unix stream socket it listens on; each call to
`log` sends one JSON line `{"ts": float, "step": int | null, "values": {name: number}}` over it. Outside INCL
both functions are harmless no-ops (`params()` returns `{}`).
"""

from incl._sdk import log, params

__all__ = ["log", "params"]
