"""Which paths a walk leaves out: `.gitignore` and `.inclignore` files at every level, with git's semantics
(pathspec's GitIgnoreSpec does the matching), plus patterns the caller passes (outputs' `exclude`).

As in git, a file's patterns apply to paths below its folder, a deeper file overrides a shallower one, and a
later pattern overrides an earlier one (`.inclignore` is read after `.gitignore`, so it can re-include).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pathspec import GitIgnoreSpec

from incl.artifacts.errors import UnreadableFile

IGNORE_FILES = (".gitignore", ".inclignore")


class _Level(NamedTuple):
    base: str  # the folder the patterns are relative to: "" for the root, else "sub/dir/"
    spec: GitIgnoreSpec


class Rules:
    """The patterns in force in one folder: the caller's, then its ignore files' and its parents', deepest first."""

    def __init__(self, explicit: GitIgnoreSpec | None = None, levels: tuple[_Level, ...] = ()) -> None:
        self._explicit = explicit
        self._levels = levels

    @classmethod
    def excluding(cls, patterns: Sequence[str]) -> Rules:
        """Rules with the caller's patterns (relative to the root), which outrank every ignore file."""
        return cls(GitIgnoreSpec.from_lines(patterns) if patterns else None)

    def enter(self, folder: Path, rel: str, files: Sequence[str]) -> Rules:
        """The rules inside `folder` (relative path `rel`), adding the ignore `files` it holds."""
        lines: list[str] = []
        for name in files:
            path = folder / name
            try:
                lines += path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise UnreadableFile(f"{path}: cannot read it ({exc.strerror})", path=str(path)) from None
        if not lines:
            return self
        level = _Level(f"{rel}/" if rel else "", GitIgnoreSpec.from_lines(lines))
        return Rules(self._explicit, (level, *self._levels))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        suffix = "/" if is_dir else ""
        if self._explicit is not None:
            result = self._explicit.check_file(rel + suffix)
            if result.include is not None:
                return result.include
        for level in self._levels:
            result = level.spec.check_file(rel[len(level.base):] + suffix)
            if result.include is not None:
                return result.include
        return False
