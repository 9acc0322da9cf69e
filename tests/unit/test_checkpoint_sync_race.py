"""Periodic checkpoint syncs while the job rewrites its checkpoints (issue 16): each file is hashed and uploaded
from one open file, so no sync fails and every stored file is one whole version the job wrote."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from incl.agent.workspace import JobFiles, Workspace
from incl.artifacts import StoreConfig, open_store
from incl.artifacts.refs import blob_key, read_manifest
from incl.artifacts.store import ArtifactStore

SYNCS = 25
BIG = 300_000  # read again from its open file for the upload
SMALL = 48 * 1024  # kept in memory from the read that hashed it


def version(n: int, size: int) -> bytes:
    """A header naming the version and a body derived from it: a torn or mixed read matches no version."""
    header = f"version {n:08d}\n".encode()
    body = hashlib.sha256(header).digest() * (size // 32 + 1)
    return (header + body)[:size]


def version_of(data: bytes, size: int) -> int | None:
    try:
        n = int(data[8:16])
    except ValueError:
        return None
    return n if data == version(n, size) else None


class Writer(threading.Thread):
    """Writes versions 1, 2, 3... of one checkpoint until stopped, resting `rest` seconds after each (a training
    loop's steps between checkpoints)."""

    def __init__(self, write: Callable[[bytes], None], size: int, rest: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.write, self.size, self.rest = write, size, rest
        self.written = 0
        self.stop = threading.Event()
        self.started_writing = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.write(version(self.written + 1, self.size))
            self.written += 1
            if self.written == 2:
                self.started_writing.set()
            self.stop.wait(self.rest)


def replacing(path: Path, scratch: Path) -> Callable[[bytes], None]:
    """torch.save to a temporary file, then rename over the checkpoint."""
    def write(data: bytes) -> None:
        scratch.write_bytes(data)
        os.replace(scratch, path)
    return write


def in_place(path: Path) -> Callable[[bytes], None]:
    """The same file rewritten where it is, 4 KiB per write (same size, no truncation): a reader may see a mix
    of two versions."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def write(data: bytes) -> None:
        for at in range(0, len(data), 4096):
            os.pwrite(fd, data[at:at + 4096], at)
    return write


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    async with open_store(f"file://{tmp_path}/store", config=StoreConfig(fsync=False)) as s:
        yield s


async def stored_versions(store: ArtifactStore, digest: str) -> dict[str, int | None]:
    """Each file of the stored tree: which version its bytes are (None: not a version the writer wrote)."""
    _, manifest = await read_manifest(store, digest)
    sizes = {"model.pt": BIG, "state.bin": SMALL}
    return {e.path: version_of(await store.get_bytes(blob_key(e.digest)), sizes[e.path]) for e in manifest.files}


async def test_syncs_during_rename_and_in_place_rewrites_never_fail_and_store_whole_versions(
        store: ArtifactStore, tmp_path: Path) -> None:
    """One writer keeps replacing model.pt by rename, another rewrites state.bin in place, while syncs run back to
    back with no retry: every sync succeeds, and each stored file is exactly one version that was written."""
    ws = Workspace(tmp_path / "agent", "job-1", 1).create()
    files = JobFiles(store, ws, StoreConfig(fsync=False))
    (tmp_path / "scratch").mkdir()
    writers = [Writer(replacing(ws.checkpoints / "model.pt", tmp_path / "scratch" / "model.pt"), BIG),
               Writer(in_place(ws.checkpoints / "state.bin"), SMALL, rest=0.08)]
    for w in writers:
        w.start()
    seen: dict[str, set[int | None]] = {"model.pt": set(), "state.bin": set()}
    try:
        for w in writers:
            assert w.started_writing.wait(10)
        for _ in range(SYNCS):
            result = await files.sync_checkpoints(attempts=1, retry_delay=0)
            assert result is not None
            for path, n in (await stored_versions(store, result.digest)).items():
                seen[path].add(n)
    finally:
        for w in writers:
            w.stop.set()
            w.join()
    assert None not in seen["model.pt"], seen["model.pt"]
    assert None not in seen["state.bin"], seen["state.bin"]
    assert len(seen["model.pt"]) > 1 and len(seen["state.bin"]) > 1, seen
    final = await files.sync_checkpoints(attempts=1, retry_delay=0)  # the writers are done: the last versions
    assert final is not None
    assert await stored_versions(store, final.digest) == {"model.pt": writers[0].written,
                                                          "state.bin": writers[1].written}
