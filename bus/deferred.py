"""nats-py without its WebSocket transport: nats-py imports aiohttp when it is imported, only for `ws://` servers,
which INCL never uses, and that import is about half of what a short CLI command spends before it talks to NATS
(0.3 s of 0.67 s under `python -X importtime` on a loaded host). nats-py is imported here as if aiohttp were not
installed, so it leaves WebSocket out (a `ws://` URL would get nats-py's own "install aiohttp" error); aiohttp stays
importable for what does use it (the S3 client), which imports it on its first use.

`importlib.util.LazyLoader` cannot do this on Python 3.11: the `import` statement reads the module's `__spec__`,
which loads a lazy module at once.
"""

from __future__ import annotations

import importlib
import sys


def import_nats() -> None:
    """Import nats-py's transports without aiohttp, unless something imported aiohttp already."""
    if "nats.aio.transport" in sys.modules or "aiohttp" in sys.modules:
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # the import system's "not installed"
    try:
        importlib.import_module("nats.aio.transport")
    finally:
        del sys.modules["aiohttp"]
