"""Big trees (issue 10): building a 20,000-file code folder leaves the event loop free for heartbeats."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest

from incl.artifacts import BlobCache, StoreConfig, TreeLimits, open_store, pull_tree
from incl.artifacts import manifest as mf
from incl.artifacts import packs as pk
from incl.artifacts.refs import manifest_key, pack_key

FILES = 20_000


async def test_materialising_20k_files_keeps_the_event_loop_responsive(tmp_path: Path) -> None:
    """A ticker that asks to run every 10 ms is never held up 0.5 s while pull_tree fetches and writes the
    folder (the agent's heartbeats run on that loop), and every file arrives with its bytes and mode."""
    contents = {f"d{i // 1000}/e{i // 100 % 10}/f{i}.txt": f"v{i}\n".encode() for i in range(FILES)}
    digests = {path: hashlib.sha256(data).hexdigest() for path, data in contents.items()}
    limits = TreeLimits()
    packs = pk.plan({digests[p]: len(d) for p, d in contents.items()}, limits)
    where = {d: (n, at) for n, p in enumerate(packs) for d, at in p.offsets().items()}
    by_digest = {digests[p]: d for p, d in contents.items()}
    entries = [mf.Entry(path=p, kind="file", mode=0o644, size=len(d), digest=digests[p], pack=where[digests[p]][0],
                        offset=where[digests[p]][1]) for p, d in contents.items()]
    data, digest = mf.encode(mf.build(entries, [p.id for p in packs]))
    async with open_store(f"file://{tmp_path}/store", config=StoreConfig(fsync=False)) as store:
        for p in packs:
            await store.put_bytes(pack_key(p.id), b"".join(by_digest[m.digest] for m in p.members))
        await store.put_bytes(manifest_key(digest), data)

        gaps: list[float] = []

        async def ticker() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last - 0.01)
                last = now

        tick = asyncio.create_task(ticker())
        try:
            pulled = await pull_tree(store, digest, tmp_path / "code", blob_cache=BlobCache(tmp_path / "cache"),
                                     limits=limits)
        finally:
            tick.cancel()
    assert pulled.files == FILES and pulled.downloaded_blobs == len(packs)
    assert max(gaps) < 0.5, f"the event loop was held up {max(gaps):.2f} s"
    for i in (0, 1234, FILES - 1):
        path = tmp_path / "code" / f"d{i // 1000}/e{i // 100 % 10}/f{i}.txt"
        assert path.read_bytes() == f"v{i}\n".encode() and path.stat().st_mode & 0o777 == 0o644
    assert sum(1 for p in (tmp_path / "code").rglob("*.txt")) == FILES


async def test_submit_progress_is_plain_lines_when_stderr_is_not_a_terminal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a terminal the CLI still says what it is doing: scanning, hashing, then uploading lines."""
    from incl.artifacts import push_tree
    from incl.cli import files

    monkeypatch.setattr(files, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(files, "PLAIN_EVERY", 0.0)  # a line per update (5 s apart in real use)
    src = tmp_path / "work"
    for i in range(300):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i}").write_bytes(f"{i}".encode())
    progress = files.Transfer(f"uploading {src}", tty=False)
    async with open_store(f"file://{tmp_path}/store", config=StoreConfig(fsync=False)) as store:
        await push_tree(store, src, progress=progress, phase=progress.phase)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"scanning {src}: ") for line in lines), lines
    assert f"hashing {src}: 300/300 files" in "\n".join(lines), lines
    assert lines[-1].startswith(f"uploading {src}: ") and " of " in lines[-1], lines


async def test_removing_an_attempt_folder_is_immediate_and_its_files_are_deleted_later(tmp_path: Path) -> None:
    """An attempt's folder disappears at once (the runner calls remove() on the event loop); its files, and the
    job's folder once its last attempt is gone, are deleted by the trash thread, and nothing is left after.
    One thread serves every removal: a second one is deleted by the same."""
    import threading

    from incl.agent.workspace import Workspace

    removed = [Workspace(tmp_path, "j1", 1).create(), Workspace(tmp_path, "j2", 1).create()]
    for ws in removed:
        for i in range(2000):
            (ws.code / f"f{i}").write_bytes(b"x")
        (ws.outputs / "deep" / "er").mkdir(parents=True)
        (ws.outputs / "link").symlink_to(tmp_path / "kept")
    (tmp_path / "kept").mkdir()
    for ws in removed:
        ws.remove()
        assert not ws.dir.exists()
    for _ in range(500):
        if not any((tmp_path / "trash").iterdir()) and not any((tmp_path / "jobs").iterdir()):
            break
        await asyncio.sleep(0.02)
    assert list((tmp_path / "trash").iterdir()) == [] and list((tmp_path / "jobs").iterdir()) == []
    assert (tmp_path / "kept").is_dir()  # a symlink is removed, never followed
    assert [t.name for t in threading.enumerate()].count("incl-trash") == 1
