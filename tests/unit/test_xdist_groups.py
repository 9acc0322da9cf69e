"""The suite's split between pytest-xdist workers (tests/xdistgroups.py), checked on a real two-worker run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from xdistgroups import order_longest_first

ROOT = Path(__file__).resolve().parents[2]
FILES = ["tests/unit/test_redact.py", "tests/unit/test_job_ids.py", "tests/unit/test_layout.py"]


def test_each_file_runs_whole_on_one_worker() -> None:
    """`--dist loadgroup` as scripts/test.sh runs it: every test of a file on the same worker (pytest-xdist's own
    grouping silently gave each test its own worker under pytest 9.2)."""
    run = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p",
                          "no:cacheprovider", *FILES], cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    workers: dict[str, set[str]] = {}
    for worker, nodeid in re.findall(r"^\[(gw\d+)\] \[ *\d+%\] PASSED (\S+)", run.stdout, re.MULTILINE):
        workers.setdefault(nodeid.split("::")[0], set()).add(worker)
    assert set(workers) == set(FILES), run.stdout[-3000:]
    assert all(len(w) == 1 for w in workers.values()), workers


class Item:
    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid


def test_the_groups_expected_to_take_longest_come_first_each_in_its_own_order() -> None:
    items = [Item(i) for i in ("a.py::1", "b.py::1", "a.py::2", "c.py::1", "b.py::2", "b.py::3")]
    order_longest_first(items, lambda i: i.nodeid.split("::")[0], lambda i: 1.0)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == ["b.py::1", "b.py::2", "b.py::3", "a.py::1", "a.py::2", "c.py::1"]

