"""How the CLI draws for people: tables that fit a terminal by dropping columns and are never cut when piped,
user text never read as markup, metrics with NaN and infinities kept as what they are."""

from __future__ import annotations

import io
import math

import pytest
from rich.console import Console

from incl.cli.jobs import ATTEMPT_COLUMNS, LS_COLUMNS
from incl.cli.logs import json_number, sparkline
from incl.cli.output import UNBOUNDED, Column, plural, print_table, state

MARKUP = 'python3 -c "import sys; [print(i) for i in x]; sys.exit(1)"'
REASON = "exit code 1: Traceback (most recent call last): NameError: name 'x' is not defined [see the log]"
LS_ROW = ["j-0123456789ab", "resnet50-finetune-imagenet", "ada.lovelace", state("FAILED"), "2 (1 recovered)",
          "i-0abc123def4567890", "3m12s ago", "1h02m", "8× 97%", REASON]


def render(columns: list[Column], rows: list[list[object]], *, terminal: bool, width: int = 80) -> str:
    """What `print_table` writes to a terminal `width` wide, or to a pipe (the CLI's console is unbounded)."""
    buf = io.StringIO()
    out = Console(file=buf, width=width if terminal else UNBOUNDED, force_terminal=terminal, color_system=None)
    print_table(columns, rows, out=out)  # type: ignore[arg-type]
    return buf.getvalue()


def test_ls_at_80_columns_drops_columns_by_priority_and_never_cuts_a_header() -> None:
    lines = render(LS_COLUMNS, [LS_ROW], terminal=True).splitlines()
    assert all(len(line) <= 80 for line in lines)
    headers = lines[0].split()
    assert headers[0] == "ID" and "STATE" in headers and headers[-1] == "REASON"  # what matters most stays
    assert "SUBMITTED" not in headers  # what matters least went first
    assert all(h in [c.header for c in LS_COLUMNS] for h in headers)  # no "US…" or "ATTEM…"
    assert "j-0123456789ab" in lines[1] and "FAILED" in lines[1]
    words = " ".join(lines).split()
    assert all(word in words for word in REASON.split())  # the reason wraps in the room left, whole


def test_ls_on_a_wide_terminal_shows_every_column() -> None:
    assert render(LS_COLUMNS, [LS_ROW], terminal=True, width=250).splitlines()[0].split() == \
        [c.header for c in LS_COLUMNS]


def test_piped_tables_are_never_cut_or_wrapped() -> None:
    lines = render(LS_COLUMNS, [LS_ROW], terminal=False).splitlines()
    assert lines[0].split() == [c.header for c in LS_COLUMNS]
    assert len(lines) == 2 and REASON in lines[1] and "resnet50-finetune-imagenet" in lines[1]


def test_a_long_attempt_reason_wraps_in_its_column_at_80_and_stays_on_one_line_piped() -> None:
    row = ["1", "local-0", state("FAILED"), "5m ago", "5m ago", "4m ago", "1m02s", "1", REASON]
    columns = [c for c in ATTEMPT_COLUMNS if c.header not in ("INSTANCE", "MARKET")]
    narrow = render(columns, [row], terminal=True).splitlines()
    assert all(len(line) <= 80 for line in narrow) and len(narrow) <= 4
    assert render(columns, [row], terminal=False).splitlines()[1].endswith(REASON + " ")


def test_user_text_in_a_table_is_shown_as_written_not_as_markup() -> None:
    out = render([Column("RUN"), Column("NAME")], [[MARKUP, "[bold]x[/bold]"]], terminal=False)
    assert MARKUP in out and "[bold]x[/bold]" in out


def test_sparkline_marks_nan_and_infinities_instead_of_crashing() -> None:
    line = sparkline([1.0, 0.5, math.nan, math.inf, -math.inf, 0.25])
    assert len(line) == 6 and line[2:5] == "×↑↓"
    assert line[0] == "█" and line[5] == "▁"  # the finite values keep their scale
    assert sparkline([math.nan, math.nan]) == "××"


@pytest.mark.parametrize(("value", "shown"), [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity"),
                                              (0.5, 0.5)])
def test_json_tells_nan_and_the_infinities_apart(value: float, shown: object) -> None:
    assert json_number(value) == shown


def test_plural() -> None:
    assert (plural(1, "file"), plural(2, "file"), plural(0, "file")) == ("1 file", "2 files", "0 files")
