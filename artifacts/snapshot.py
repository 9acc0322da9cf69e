"""Walking a tree for a snapshot: what is in it, what is left out, and what makes it impossible to snapshot.

Code snapshots (`gitignore=True`) honour `.gitignore` and `.inclignore` at every level and always leave out
`.git/`; outputs and checkpoints pass `exclude` patterns instead. Either way the walk refuses, with one error
class per problem (errors.py): a tree over `max_bytes`, unreadable files, symlinks that point outside the
tree or loop, sockets/fifos/devices, names that are not UTF-8. Symlinks are kept as symlinks, never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from incl.artifacts.errors import SymlinkLoop, SymlinkOutside, TreeTooLarge, UnreadableFile, UnsupportedFile
from incl.artifacts.ignore import IGNORE_FILES, Rules
from incl.artifacts.manifest import Kind

ALWAYS_SKIPPED = ".git"  # in code snapshots


class StatKey(NamedTuple):
    """What says a file is unchanged since it was last hashed (git's index uses the same fields)."""

    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class Found(NamedTuple):
    rel: str  # POSIX path relative to the root
    kind: Kind
    mode: int  # permission bits of files and folders
    stat: StatKey  # files: compared again after hashing and after uploading
    target: str = ""  # symlinks: relative to the link's folder


def walk_tree(root: Path, *, gitignore: bool = False, exclude: Sequence[str] = (),
              max_bytes: int | None = None, biggest_shown: int = 5,
              scanned: Callable[[int], None] | None = None) -> list[Found]:
    """Every entry under `root` that the rules keep (blocking: run it in a thread). `scanned` is told the
    number of entries found so far after each folder."""
    real_root = os.path.realpath(root)
    if not os.path.isdir(real_root):
        raise UnreadableFile(f"{root} is not a folder", path=str(root))
    found: list[Found] = []
    pending = [(real_root, "", Rules.excluding(exclude))]
    while pending:
        folder, rel, rules = pending.pop()
        entries = _scan(folder)
        if gitignore:
            names = {e.name for e in entries}
            rules = rules.enter(Path(folder), rel, [n for n in IGNORE_FILES if n in names])
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            item = _visit(entry, child, rules, real_root, gitignore)
            if item is not None:
                found.append(item)
                if item.kind == "dir":
                    pending.append((entry.path, child, rules))
        if scanned is not None:
            scanned(len(found))
    _check_size(root, found, max_bytes, biggest_shown)
    return found


def _scan(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as exc:
        raise UnreadableFile(f"{folder}: cannot list this folder ({exc.strerror})", path=folder) from None


def _visit(entry: os.DirEntry[str], rel: str, rules: Rules, real_root: str, gitignore: bool) -> Found | None:
    if gitignore and entry.name == ALWAYS_SKIPPED and entry.is_dir(follow_symlinks=False):
        return None
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:  # deleted while we walked: not part of the snapshot
        return None
    is_dir = stat.S_ISDIR(st.st_mode)
    if rules.ignored(rel, is_dir):
        return None
    try:
        rel.encode()
    except UnicodeEncodeError:
        raise UnsupportedFile(f"{entry.path!r}: the name is not valid UTF-8; rename it or ignore it",
                              path=entry.path) from None
    mode = stat.S_IMODE(st.st_mode)
    if is_dir:
        return Found(rel, "dir", mode, StatKey.of(st))
    if stat.S_ISREG(st.st_mode):
        return Found(rel, "file", mode, StatKey.of(st))
    if stat.S_ISLNK(st.st_mode):
        return Found(rel, "symlink", 0, StatKey.of(st), _link_target(entry.path, real_root))
    raise UnsupportedFile(f"{entry.path}: a socket, fifo or device cannot be snapshotted; ignore it",
                          path=entry.path)


def _link_target(path: str, real_root: str) -> str:
    """The link's target if it stays inside the root (an absolute one made relative); else refuse."""
    target = os.readlink(path)
    try:
        real = os.path.realpath(path, strict=True)
    except FileNotFoundError:  # dangling: where it would point
        real = os.path.realpath(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkLoop(f"{path} -> {target}: a symlink loop", path=path) from None
        raise UnreadableFile(f"{path}: cannot resolve this symlink ({exc.strerror})", path=path) from None
    if real != real_root and not real.startswith(real_root + os.sep):
        raise SymlinkOutside(f"{path} -> {target} points outside {real_root}; copy what it points to into "
                             "the folder, or ignore the link", path=path)
    if os.path.isabs(target):
        return os.path.relpath(real, os.path.dirname(path))
    return target


def _check_size(root: Path, found: list[Found], max_bytes: int | None, shown: int) -> None:
    if max_bytes is None:
        return
    files = [f for f in found if f.kind == "file"]
    total = sum(f.stat.size for f in files)
    if total <= max_bytes:
        return
    biggest = sorted(files, key=lambda f: f.stat.size, reverse=True)[:shown]
    listing = "\n".join(f"  {human(f.stat.size):>10}  {f.rel}" for f in biggest)
    raise TreeTooLarge(f"{root} holds {human(total)} in {len(files)} files, over the {human(max_bytes)} limit. "
                       f"The biggest:\n{listing}\nList what the job does not need in {root}/.inclignore "
                       "(same syntax as .gitignore), or fetch big data with `data:` instead.", path=str(root))


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
