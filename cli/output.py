"""Rendering for people (rich tables) and machines (`--json`), and one place that turns errors into exits."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from incl.proto.errors import InclError, SpecInvalid, Unavailable

F = TypeVar("F", bound=Callable[..., Any])

UNBOUNDED = 1_000_000  # columns: output that is not a terminal is never cut or wrapped to fit one


def _stdout() -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=UNBOUNDED)


console = _stdout()
err_console = Console(stderr=True, soft_wrap=True)

EXIT_ERROR, EXIT_USAGE, EXIT_UNAVAILABLE = 1, 2, 3

STATE_STYLE = {
    "QUEUED": "yellow", "ASSIGNED": "cyan", "STARTING": "cyan", "RUNNING": "blue", "SUCCEEDED": "green",
    "FAILED": "red", "CANCELLED": "magenta", "LOST": "red", "PREEMPTED": "yellow",
    # studies and their trials (Optuna's names)
    "STOPPING": "magenta", "STOPPED": "magenta", "COMPLETED": "green",
    "COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "WAITING": "yellow",
}


def print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def fail(message: str, code: int = EXIT_ERROR) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(code)


def handles_errors(fn: F) -> F:
    """Every INCL error becomes one clear line on stderr and a non-zero exit; no tracebacks for users."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # Imported here, as the command runs, so that `--help` loads neither structlog nor the artifact store (whose
        # package brings structlog): see tests/unit/test_cli_startup.py.
        from incl.artifacts.errors import ArtifactError  # noqa: PLC0415 - lazy
        from incl.bus.logsetup import configure  # noqa: PLC0415 - lazy

        configure(os.environ.get("INCL_LOG_LEVEL", "warning"))  # the library's own log lines: only trouble, to stderr
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


def state(value: str) -> Text:
    return Text(value, style=STATE_STYLE.get(value, "white"))


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """"1 file", "2 files"; `nouns` where adding an s is wrong."""
    return f"{n} {noun if n == 1 else nouns or noun + 's'}"


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


class Column(msgspec.Struct, frozen=True):
    """A table column. On a narrow terminal a `shrink` column is first cut to that many characters (with "…"),
    then the columns with the highest `drop` go (0: never dropped); the `wrap` column (a reason) wraps in the
    room left rather than widening the table. Piped, every column is whole."""

    header: str
    drop: int = 0
    shrink: int = 0
    justify: JustifyMethod = "left"
    wrap: bool = False


WRAP_AT_LEAST = 30  # columns a wrapping column is given before any other column is dropped for it


def _cap(col: Column, measuring: bool, shrunk: bool) -> int | None:
    if col.wrap and measuring:
        return max(WRAP_AT_LEAST, len(col.header))
    if col.shrink and shrunk:
        return max(col.shrink, len(col.header))
    return None


def _table(columns: list[Column], rows: Sequence[Sequence[str | Text]], title: str | None, *, measuring: bool = False,
           shrunk: bool = False) -> Table:
    table = Table(box=None, header_style="bold", title=None if title is None else Text(title))
    for col in columns:
        table.add_column(col.header, justify=col.justify, min_width=len(col.header), no_wrap=not col.wrap,
                         overflow="fold" if col.wrap else "ellipsis", max_width=_cap(col, measuring, shrunk))
    for row in rows:  # plain strings are the user's text: shown as they are, never read as markup
        table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    return table


def fit(out: Console, columns: list[Column], rows: Sequence[Sequence[str | Text]],
        title: str | None = None) -> tuple[list[int], bool]:
    """The indexes of the columns to show on `out`, and whether the shrinkable ones are cut: all columns, whole,
    unless `out` is a terminal too narrow for them."""
    keep = list(range(len(columns)))
    if not out.is_terminal:
        return keep, False
    unbounded = out.options.update_width(UNBOUNDED)

    def fits(shrunk: bool) -> bool:
        table = _table([columns[i] for i in keep], [[row[i] for i in keep] for row in rows], title,
                       measuring=True, shrunk=shrunk)
        return Measurement.get(out, unbounded, table).maximum <= out.width

    while True:
        for shrunk in (False, True):
            if fits(shrunk):
                return keep, shrunk
        droppable = [i for i in keep if columns[i].drop]
        if not droppable:
            return keep, True
        keep.remove(max(droppable, key=lambda i: (columns[i].drop, i)))


def print_table(columns: list[Column], rows: Sequence[Sequence[str | Text]], title: str | None = None,
                out: Console | None = None) -> None:
    """A table whole when piped; on a terminal, the columns that matter most, each header in full."""
    out = out or console
    keep, shrunk = fit(out, columns, rows, title)
    out.print(_table([columns[i] for i in keep], [[row[i] for i in keep] for row in rows], title, shrunk=shrunk))
