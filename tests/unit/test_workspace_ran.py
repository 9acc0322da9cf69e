"""An attempt's "started here" mark outlives its folder, and old marks are forgotten."""

from __future__ import annotations

import os
import time
from pathlib import Path

from incl.agent.workspace import Workspace, prune_ran


def test_the_mark_outlives_the_attempts_folder(tmp_path: Path) -> None:
    ws = Workspace(tmp_path, "j-1", 2)
    assert not ws.started
    ws.write_assignment(b"sealed")
    ws.remove()
    assert not ws.dir.exists() and ws.started
    assert not Workspace(tmp_path, "j-1", 3).started and not Workspace(tmp_path, "j-2", 2).started


def test_marks_older_than_the_limit_are_forgotten(tmp_path: Path) -> None:
    old, new = Workspace(tmp_path, "j-old", 1), Workspace(tmp_path, "j-new", 1)
    for ws in (old, new):
        ws.write_assignment(b"x")
        ws.remove()
    day_ago = time.time() - 86400
    os.utime(old.ran, (day_ago, day_ago))
    assert prune_ran(tmp_path, time.time() - 3600) == 1
    assert not old.started and new.started
    assert prune_ran(tmp_path / "nowhere", time.time()) == 0
