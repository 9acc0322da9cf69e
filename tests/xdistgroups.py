"""How the suite is split between pytest-xdist workers (`scripts/test.sh` runs two, `--dist loadgroup`).

Each test file runs whole on one worker, so that its module fixtures (a moto server, a web stack, chromium) start
once; every test that uses the Docker session fixtures runs on one worker (one dockerd, one import of the python
image); and the groups are handed out longest first, so that the run does not end with one worker alone on a long
file while the other idles.

pytest-xdist's own `loadgroup` reads a test's group from a suffix it writes into the test's id, which pytest 9.2
no longer lets a plugin change (pytest-dev/pytest-xdist#1386): every test silently became its own group. Here each
worker writes the group of every test it collected into a file, and the scheduler, in the controlling process,
reads it once every worker has collected (the workers' collections are identical, so any one file will do).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

GROUPS_DIR = "incl_xdist_groups"  # the key, in each worker's `workerinput`, of the folder the groups go to
_groups_dir = pytest.StashKey[Path]()


def order_longest_first(items: list[pytest.Item], group: Callable[[pytest.Item], str],
                        cost: Callable[[pytest.Item], float]) -> None:
    """Put the groups in order of their estimated cost, the most costly first (in place; a group's tests keep
    their order, and groups of equal cost keep theirs)."""
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for n, item in enumerate(items):
        g = group(item)
        totals[g] = totals.get(g, 0.0) + cost(item)
        first.setdefault(g, n)
    position = {id(item): n for n, item in enumerate(items)}
    items.sort(key=lambda item: (-totals[group(item)], first[group(item)], position[id(item)]))


def write_groups(config: pytest.Config, items: Iterable[pytest.Item], group: Callable[[pytest.Item], str]) -> None:
    """On a worker: record each collected test's group where the scheduler will read it."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or GROUPS_DIR not in workerinput:
        return
    groups = {item.nodeid: group(item) for item in items}
    final = Path(workerinput[GROUPS_DIR]) / f"{workerinput['workerid']}.json"
    partial = final.with_suffix(".tmp")
    partial.write_text(json.dumps(groups))
    partial.replace(final)


def groups_dir(config: pytest.Config) -> Path:
    """In the controlling process: the folder the workers write their groups to (made on first use, removed by
    `remove_groups_dir`)."""
    if _groups_dir not in config.stash:
        config.stash[_groups_dir] = Path(tempfile.mkdtemp(prefix="incl-xdist-groups-"))
    return config.stash[_groups_dir]


def remove_groups_dir(config: pytest.Config) -> None:
    if _groups_dir in config.stash:
        shutil.rmtree(config.stash[_groups_dir], ignore_errors=True)


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """A scheduler that keeps each group on one worker and hands the groups out in the order the workers collected
    them (longest first, see `order_longest_first`)."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.groups: dict[str, str] | None = None

        def schedule(self) -> None:
            if self.groups is None:  # every worker has collected: their groups are written
                written = sorted(groups_dir(config).glob("*.json"))
                self.groups = json.loads(written[0].read_text()) if written else {}
            super().schedule()

        def _split_scope(self, nodeid: str) -> str:
            # without a group (no worker wrote one), the file: still one worker per file
            return (self.groups or {}).get(nodeid) or nodeid.split("::", maxsplit=1)[0]

    config.option.loadscopereorder = False  # the workers' order, longest first, not the largest count first
    return GroupScheduling(config, log)
