"""Rendering for people (rich tables) and machines (`--json`), and one place that turns errors into exits."""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console

from incl.artifacts.errors import ArtifactError
from incl.proto.errors import InclError, SpecInvalid, Unavailable

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3

STATE_STYLE = {
    "QUEUED": "yellow", "ASSIGNED": "cyan", "STARTING": "cyan", "RUNNING": "blue", "SUCCEEDED": "green",
    "FAILED": "red", "CANCELLED": "magenta", "LOST": "red", "PREEMPTED": "yellow",
}


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def fail(message: str, code: int = EXIT_ERROR) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def handles_errors(fn: F) -> F:
    """Every INCL error becomes one clear line on stderr and a non-zero exit; no tracebacks for users."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecInvalid as exc:
            fail(f"invalid spec: {exc}", EXIT_USAGE)
        except Unavailable as exc:
            fail(str(exc), EXIT_UNAVAILABLE)
        except (InclError, ArtifactError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def state(value: str) -> str:
    return f"[{STATE_STYLE.get(value, 'white')}]{value}[/]"


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    return duration(time.time() - ts) + " ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def size(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}PB"


def echo(message: str) -> None:
    click.echo(message)
