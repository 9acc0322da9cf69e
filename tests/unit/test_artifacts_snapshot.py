"""The workdir walk for code snapshots: git's ignore rules (checked against git itself) and each refusal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from incl.artifacts import StoreConfig, TreeLimits, open_store, push_tree, read_manifest
from incl.artifacts.errors import SymlinkLoop, SymlinkOutside, TreeTooLarge, UnreadableFile, UnsupportedFile
from incl.artifacts.store import ArtifactStore

IGNORED_TREE = {
    ".gitignore": "*.log\n!keep.log\nbuild/\n/data\n__pycache__/\nnotes/**/draft*\n",
    "keep.log": "", "x.log": "", "build/out.o": "", "data/big.csv": "", "train.py": "",
    "src/data/ok.txt": "", "src/build/inner.o": "", "src/__pycache__/m.pyc": "",
    "src/.gitignore": "!x.log\n*.tmp\n", "src/x.log": "", "src/a.tmp": "", "src/deep/b.tmp": "",
    "notes/2024/draft1.md": "", "notes/2024/final.md": "", "spaced name/é.txt": "",
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    async with open_store(f"file://{tmp_path}/store", config=StoreConfig(fsync=False)) as s:
        yield s


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


async def snapshot_files(store: ArtifactStore, root: Path, **kw: object) -> set[str]:
    pushed = await push_tree(store, root, gitignore=True, **kw)  # type: ignore[arg-type]
    _, manifest = await read_manifest(store, pushed.digest)
    return {e.path for e in manifest.files}


def git_keeps(root: Path) -> set[str]:
    """The files git would offer to add: untracked and not ignored."""
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    out = subprocess.run(["git", "-C", str(root), "ls-files", "--others", "--exclude-standard", "-z"],
                         check=True, capture_output=True).stdout
    return {p.decode() for p in out.split(b"\0") if p}


async def test_gitignore_at_every_level_matches_git(store: ArtifactStore, tmp_path: Path) -> None:
    """The snapshot keeps exactly the files `git` itself would: nested files, negation, anchors, `**`."""
    root = write(tmp_path / "work", IGNORED_TREE)
    ours = await snapshot_files(store, root)
    assert ours == git_keeps(root)
    assert "keep.log" in ours and "src/x.log" in ours and "src/data/ok.txt" in ours
    assert not any(p.startswith(".git/") for p in ours)


async def test_inclignore_adds_to_and_overrides_gitignore(store: ArtifactStore, tmp_path: Path) -> None:
    """`.inclignore` hides what git keeps (data sets) and can bring back what git ignores."""
    root = write(tmp_path / "work", {**IGNORED_TREE, ".inclignore": "spaced name/\n!build/\n",
                                     "build/.inclignore": "*.o\n!out.o\n"})
    ours = await snapshot_files(store, root)
    assert "build/out.o" in ours and not any(p.startswith("spaced name/") for p in ours)


async def test_git_folder_is_always_left_out(store: ArtifactStore, tmp_path: Path) -> None:
    """.git/ never goes up, even with no .gitignore at all."""
    root = write(tmp_path / "work", {"a.py": "", ".git/HEAD": "ref", ".git/objects/x": ""})
    assert await snapshot_files(store, root) == {"a.py"}


async def test_too_large_tree_names_the_biggest_files(store: ArtifactStore, tmp_path: Path) -> None:
    """Over the limit: the error lists the 5 biggest files with sizes and points at .inclignore."""
    root = tmp_path / "work"
    for i in range(8):
        (root / "d").mkdir(parents=True, exist_ok=True)
        (root / "d" / f"f{i}.bin").write_bytes(b"x" * (i + 1) * 100_000)
    with pytest.raises(TreeTooLarge) as err:
        await push_tree(store, root, gitignore=True, limits=TreeLimits(max_bytes=1_000_000))
    message = str(err.value)
    assert "3.4 MiB" in message and ".inclignore" in message
    listed = [line.split()[-1] for line in message.splitlines() if line.startswith("  ")]
    assert listed == ["d/f7.bin", "d/f6.bin", "d/f5.bin", "d/f4.bin", "d/f3.bin"]
    assert "781.2 KiB" in message
    assert await store.list("") == []


async def test_symlink_inside_is_kept_and_outside_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    """A link within the workdir stays a link (absolute ones made relative); one leaving it is refused."""
    root = write(tmp_path / "work", {"data/a.txt": "a"})
    (root / "rel").symlink_to("data/a.txt")
    (root / "abs").symlink_to(root / "data")
    (root / "dangling").symlink_to("not/yet")
    pushed = await push_tree(store, root, gitignore=True)
    _, manifest = await read_manifest(store, pushed.digest)
    links = {e.path: e.target for e in manifest.entries if e.kind == "symlink"}
    assert links == {"rel": "data/a.txt", "abs": "data", "dangling": "not/yet"}
    (tmp_path / "secret").write_text("s")
    (root / "data" / "escape").symlink_to("../../secret")
    with pytest.raises(SymlinkOutside, match=re.escape("data/escape -> ../../secret points outside")):
        await push_tree(store, root, gitignore=True)


async def test_symlink_loop_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    """a -> b -> a cannot be resolved; the error names the link."""
    root = write(tmp_path / "work", {"ok.py": ""})
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(SymlinkLoop, match="symlink loop"):
        await push_tree(store, root, gitignore=True)


async def test_a_fifo_is_refused_unless_ignored(store: ArtifactStore, tmp_path: Path) -> None:
    """Special files cannot be snapshotted; ignoring them is the way out the message suggests."""
    root = write(tmp_path / "work", {"ok.py": ""})
    os.mkfifo(root / "pipe")
    with pytest.raises(UnsupportedFile, match="pipe: a socket, fifo or device"):
        await push_tree(store, root, gitignore=True)
    (root / ".inclignore").write_text("pipe\n")
    assert await snapshot_files(store, root) == {"ok.py", ".inclignore"}


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


UNPRIVILEGED_PUSH = """
import asyncio, os, sys, tempfile
from pathlib import Path
from incl.artifacts import StoreConfig, open_store, push_tree
from incl.artifacts.errors import ArtifactError

async def push(store_dir, root):
    async with open_store("file://" + store_dir, config=StoreConfig(fsync=False)) as store:
        await push_tree(store, Path(root), gitignore=True)

async def main():
    warm = tempfile.mkdtemp()  # one push as root first: every lazy import done while we may read them
    Path(warm, "w").write_text("w")
    await push(warm + "/store", warm)
    os.setgid(65534); os.setuid(65534)  # nobody
    try:
        await push(sys.argv[1], sys.argv[2])
    except ArtifactError as exc:
        print("REFUSED", type(exc).__name__, exc.path)
asyncio.run(main())
"""


def push_as_nobody(store: Path, root: Path) -> str:
    store.mkdir(mode=0o777)
    out = subprocess.run([sys.executable, "-c", UNPRIVILEGED_PUSH, str(store), str(root)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return next(line for line in out.splitlines() if line.startswith("REFUSED")).removeprefix("REFUSED ")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unreadable_file_and_folder_are_refused_by_name(shared_tmp: Path) -> None:
    """A file or folder the user may not read fails the snapshot and names the path."""
    root = write(shared_tmp / "work", {"ok.py": "", "secret.key": "k", "private/x": ""})
    (root / "secret.key").chmod(0o600)
    (root / "private").chmod(0o755)
    assert push_as_nobody(shared_tmp / "s1", root) == f"UnreadableFile {root}/secret.key"
    (root / "secret.key").chmod(0o644)
    (root / "private").chmod(0o700)
    assert push_as_nobody(shared_tmp / "s2", root) == f"UnreadableFile {root}/private"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything: the test above covers it")
async def test_unreadable_when_not_root(store: ArtifactStore, tmp_path: Path) -> None:
    """Without root, a chmod 000 file is refused in-process with the same error."""
    root = write(tmp_path / "work", {"secret.key": "k"})
    (root / "secret.key").chmod(0)
    with pytest.raises(UnreadableFile, match=r"secret\.key"):
        await push_tree(store, root, gitignore=True)
