"""`incl submit` builds the spec a user means from flags and `-- CMD`, before anything is uploaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from incl.cli.submit import _priority, build_spec
from incl.proto.errors import SpecInvalid


def spec_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file: str | None = None, **flags: Any) -> Any:
    monkeypatch.chdir(tmp_path)
    return build_spec(file, ("python3", "train.py"), flags)


def test_a_command_line_submit_takes_the_current_folder_as_its_workdir(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert spec_from(tmp_path, monkeypatch).workdir == str(tmp_path.resolve())


def test_no_workdir_uploads_nothing_and_cannot_be_combined_with_workdir(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert spec_from(tmp_path, monkeypatch, no_workdir=True).workdir is None
    with pytest.raises(SpecInvalid, match="cannot both be given"):
        spec_from(tmp_path, monkeypatch, no_workdir=True, workdir=".")


def test_a_spec_file_keeps_its_own_workdir_or_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "incl.yaml").write_text("run: x\n")
    assert spec_from(tmp_path, monkeypatch, file="incl.yaml").workdir is None


def test_the_home_folder_is_refused_as_a_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SpecInvalid, match="is your home folder") as info:
        spec_from(tmp_path, monkeypatch)
    assert info.value.field == "workdir"


@pytest.mark.parametrize(("given", "priority"), [("high", "high"), ("5", 5), ("-10", -10)])
def test_priority_takes_a_class_name_or_a_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str,
                                               priority: int | str) -> None:
    assert spec_from(tmp_path, monkeypatch, priority=_priority(given)).priority == priority
