"""Bounds on everything INCL builds from user data before it goes on the bus (pure; no I/O).

NATS refuses a message over its payload limit (1 MB by default), and a record that grows past it can no longer
be written. So every field that carries job output or user input is bounded where it is made, with a marked
cut, and checked again where it is received.
"""

from __future__ import annotations

# A job's last lines, carried by its exit event and kept in each attempt of the job record.
TAIL_MAX_BYTES = 4096
TAIL_LINE_MAX_BYTES = 1024
# An attempt's failure reason (a message from the agent, a runtime or the user's command).
REASON_MAX_CHARS = 2000
# Attempts whose tails the job record keeps (older attempts keep their state, times and reason).
TAILS_KEPT = 10

# The job spec as submitted (after parsing), and its env and secrets.
SPEC_MAX_BYTES = 256 * 1024
ENV_MAX_VARS = 1000

# One metric line from the SDK, and one point's values.
METRIC_LINE_MAX_BYTES = 64 * 1024
METRIC_MAX_VALUES = 256
METRIC_NAME_MAX_CHARS = 200

# An agent's labels.
LABELS_MAX = 64
LABEL_KEY_MAX_CHARS = 63
LABEL_VALUE_MAX_CHARS = 256

# Listings come in pages of at most this many items (and at most a payload's worth of bytes).
PAGE_MAX_ITEMS = 500


def cut_line(line: str, limit: int = TAIL_LINE_MAX_BYTES) -> str:
    """`line` itself, or its end with a marker saying how much was cut (the end is what failed)."""
    data = line.encode()
    if len(data) <= limit:
        return line
    keep = data[len(data) - limit:].decode("utf-8", "ignore")
    return f"[line cut: {len(data) - len(keep.encode())} of {len(data)} bytes not shown] {keep}"


def bound_tail(lines: list[str], max_bytes: int = TAIL_MAX_BYTES, line_max: int = TAIL_LINE_MAX_BYTES) -> list[str]:
    """The last lines of `lines` that fit in `max_bytes`, cut at a line boundary; a line longer than `line_max`
    keeps its end; dropped lines are counted in a first marker line."""
    out: list[str] = []
    total = 0
    for line in reversed(lines):
        line = cut_line(line, line_max)
        size = len(line.encode()) + 1
        if out and total + size > max_bytes:
            break
        out.append(line)
        total += size
    out.reverse()
    if len(out) < len(lines):
        out.insert(0, f"[{len(lines) - len(out)} earlier lines not shown]")
    return out


def bound_reason(reason: str | None) -> str | None:
    if reason is None or len(reason) <= REASON_MAX_CHARS:
        return reason
    return reason[:REASON_MAX_CHARS] + f" [cut: {len(reason) - REASON_MAX_CHARS} more characters]"


def check_labels(labels: dict[str, str]) -> str | None:
    """Why these agent labels are refused, or None."""
    if len(labels) > LABELS_MAX:
        return f"{len(labels)} labels, over the limit of {LABELS_MAX}"
    for key, value in labels.items():
        if len(key) > LABEL_KEY_MAX_CHARS:
            return f"label {key[:40]!r}... is {len(key)} characters, over the limit of {LABEL_KEY_MAX_CHARS}"
        if len(value) > LABEL_VALUE_MAX_CHARS:
            return (f"the value of label {key!r} is {len(value)} characters, over the limit of "
                    f"{LABEL_VALUE_MAX_CHARS}")
    return None
