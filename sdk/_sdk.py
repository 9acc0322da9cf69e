"""The job-side half of INCL's metric channel (see the package docstring for the wire format)."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

_SOCKET_ENV = "INCL_METRICS_SOCKET"
_PARAMS_ENV = "INCL_PARAMS"


class _Channel:
    """Lines go to the agent's socket. If the agent is away (it restarts, the job's container outlives it),
    lines wait in a bounded buffer and the channel reconnects on a later call; it never blocks training."""

    RETRY_AFTER = 1.0  # seconds between reconnect tries
    BUFFER_LINES = 10_000  # lines kept while the agent is away; the oldest go first past this

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._path: str | None = None
        self._pending: list[bytes] = []
        self._retry_at = 0.0
        self._warned = False

    def send(self, line: bytes) -> None:
        path = os.environ.get(_SOCKET_ENV)
        if not path:
            return
        with self._lock:
            self._pending.append(line)
            del self._pending[: -self.BUFFER_LINES]
            if self._sock is None and time.monotonic() < self._retry_at:
                return
            try:
                if self._sock is None or self._path != path:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self._sock.connect(path)
                    self._path = path
                self._sock.sendall(b"".join(self._pending))
                self._pending.clear()
            except OSError as exc:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                self._retry_at = time.monotonic() + self.RETRY_AFTER
                if not self._warned:
                    self._warned = True
                    print(f"incl: metrics channel unavailable ({exc}); points are kept and sent when it is back",
                          file=sys.stderr)


_channel = _Channel()


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"incl.log: value of {name!r} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"incl.log: value of {name!r} must be a number, got {type(value).__name__}") from None


def log(values: Mapping[str, Any], step: int | None = None) -> None:
    """Record metric values (e.g. `{"loss": 0.3}`) at an optional integer step."""
    if not isinstance(values, Mapping):
        raise TypeError("incl.log: values must be a mapping of names to numbers")
    clean = {str(k): _number(str(k), v) for k, v in values.items()}
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise TypeError("incl.log: step must be an int")
    record = {"ts": time.time(), "step": step, "values": clean}
    _channel.send(json.dumps(record, allow_nan=True).encode() + b"\n")


def params() -> dict[str, Any]:
    """The hyperparameters of this trial (`{}` outside an INCL HPO trial)."""
    raw = os.environ.get(_PARAMS_ENV)
    return json.loads(raw) if raw else {}
