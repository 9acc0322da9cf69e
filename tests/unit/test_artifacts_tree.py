"""Trees through a real file:// store: round trips, uploads of only what changed, the blob cache, refs."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from incl.artifacts import BlobCache, HashCache, StoreConfig, TreeLimits, open_store, pull_tree, push_tree
from incl.artifacts.errors import FileChanged, IntegrityError, InvalidManifest, NotFound
from incl.artifacts.store import ArtifactStore
from incl.artifacts.tree import read_manifest, resolve_ref


def make_tree(root: Path) -> Path:
    """Modes, a symlink, an empty file, an empty folder, unicode and spaces in names."""
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "src" / "train.py").write_text("print('hi')\n")
    (root / "src" / "pkg" / "données ü.txt").write_text("accents\n")
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / "readonly.cfg").write_text("x=1\n")
    (root / "readonly.cfg").chmod(0o444)
    (root / "zero").write_bytes(b"")
    (root / "weights.bin").write_bytes(random.Random(7).randbytes(300_000))
    (root / "latest").symlink_to("src/train.py")
    (root / "src" / "up").symlink_to("..")
    (root / "src" / "pkg").chmod(0o750)
    return root


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """What a user sees in a folder: every entry's kind, mode and content (or link target)."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                out[rel] = ("link", 0, os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, b"")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, path.read_bytes())
    return out


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    async with open_store(f"file://{tmp_path}/store", config=StoreConfig(fsync=False)) as s:
        yield s


async def test_round_trip_is_byte_identical_with_modes_links_and_odd_names(store: ArtifactStore,
                                                                           tmp_path: Path) -> None:
    """A pulled tree equals the pushed one: contents, modes, symlinks, empty files and folders, names."""
    src = make_tree(tmp_path / "work")
    pushed = await push_tree(store, src)
    pulled = await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    assert snapshot(tmp_path / "out") == snapshot(src)
    assert (pulled.files, pulled.bytes) == (pushed.files, pushed.bytes) == (6, sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()))


async def test_unchanged_tree_uploads_nothing_and_one_change_uploads_one_blob(store: ArtifactStore,
                                                                              tmp_path: Path) -> None:
    """Resubmitting re-reads and uploads nothing; editing one file hashes and uploads just that file."""
    src = make_tree(tmp_path / "work")
    cache = HashCache(tmp_path / "hashes.sqlite")
    limits = TreeLimits(racy_window=0)  # the files were written moments ago
    shown: list[tuple[int, int]] = []
    first = await push_tree(store, src, hash_cache=cache, limits=limits,
                            progress=lambda done, total: shown.append((done, total)))
    assert first.uploaded_blobs == 6 and first.hashed_files == 6
    assert shown[0] == (0, first.bytes) and shown[-1] == (first.bytes, first.bytes) and len(shown) == 7
    again = await push_tree(store, src, hash_cache=cache, limits=limits)
    assert (again.digest, again.hashed_files, again.uploaded_blobs, again.uploaded_bytes) == (first.digest, 0, 0, 0)
    (src / "src" / "train.py").write_text("print('changed')\n")
    edited = await push_tree(store, src, hash_cache=cache, limits=limits)
    assert edited.digest != first.digest
    assert (edited.hashed_files, edited.uploaded_blobs, edited.uploaded_bytes) == (1, 1, 17)
    manifests = await store.list("manifests/")
    assert len(manifests) == 2


async def test_another_machine_pushing_the_same_tree_sends_no_blob(store: ArtifactStore, tmp_path: Path) -> None:
    """With no local record at all, a tree whose manifest the store holds is not uploaded again (asked for
    as soon as a big file is at stake; a few small files are cheaper to PUT again than to ask about)."""
    src = make_tree(tmp_path / "work")
    (src / "model.ckpt").write_bytes(b"w" * (2 << 20))
    first = await push_tree(store, src, hash_cache=HashCache(tmp_path / "laptop.sqlite"))
    other = await push_tree(store, src, hash_cache=HashCache(tmp_path / "ci.sqlite"))
    assert other.digest == first.digest and (other.uploaded_blobs, other.uploaded_bytes) == (0, 0)


async def test_same_content_gives_the_same_id_and_a_mode_change_a_new_one(store: ArtifactStore,
                                                                          tmp_path: Path) -> None:
    """The manifest is deterministic: two copies of a tree share an id; chmod makes a new tree."""
    a = await push_tree(store, make_tree(tmp_path / "a"))
    b = await push_tree(store, make_tree(tmp_path / "b"))
    assert a.digest == b.digest
    (tmp_path / "b" / "run.sh").chmod(0o700)
    assert (await push_tree(store, tmp_path / "b")).digest != a.digest


async def test_second_pull_with_a_warm_cache_downloads_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    """Two jobs on one instance: the second gets the same tree with zero bytes from the store."""
    src = make_tree(tmp_path / "work")
    digest = (await push_tree(store, src)).digest
    cache = BlobCache(tmp_path / "cache")
    shown: list[tuple[int, int]] = []
    first = await pull_tree(store, digest, tmp_path / "job1", blob_cache=cache,
                            progress=lambda done, total: shown.append((done, total)))
    second = await pull_tree(store, digest, tmp_path / "job2", blob_cache=cache,
                             progress=lambda done, total: shown.append((done, total)))
    assert first.downloaded_blobs == 6 and first.downloaded_bytes == first.bytes
    assert len(shown) == 6 and shown[-1] == (first.bytes, first.bytes)  # the second pull had nothing to show
    assert (second.downloaded_blobs, second.downloaded_bytes) == (0, 0)
    assert snapshot(tmp_path / "job2") == snapshot(src)


async def test_a_job_writing_its_code_does_not_change_the_cache(store: ArtifactStore, tmp_path: Path) -> None:
    """Files are copied out of the blob cache, so editing one leaves the next job's copy intact."""
    src = make_tree(tmp_path / "work")
    digest = (await push_tree(store, src)).digest
    cache = BlobCache(tmp_path / "cache")
    await pull_tree(store, digest, tmp_path / "job1", blob_cache=cache)
    with open(tmp_path / "job1" / "src" / "train.py", "a") as f:
        f.write("# scribbled by job 1\n")
    await pull_tree(store, digest, tmp_path / "job2", blob_cache=cache)
    assert (tmp_path / "job2" / "src" / "train.py").read_text() == "print('hi')\n"


async def test_concurrent_pulls_into_one_cache_are_complete(store: ArtifactStore, tmp_path: Path) -> None:
    """Jobs filling one cache at once each get the whole tree, and no temp file is left behind."""
    src = tmp_path / "work"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 4}" / f"f{i}").write_bytes(os.urandom(1000 + 5000 * i))
    digest = (await push_tree(store, src)).digest
    results = await asyncio.gather(*(
        pull_tree(store, digest, tmp_path / f"job{n}", blob_cache=BlobCache(tmp_path / "cache")) for n in range(4)))
    for n in range(4):
        assert snapshot(tmp_path / f"job{n}") == snapshot(src)
    assert all(r.files == 40 for r in results)
    assert [p.name for p in (tmp_path / "cache").rglob(".tmp-*")] == []


async def test_checkpoints_sync_incrementally_under_a_ref(store: ArtifactStore, tmp_path: Path) -> None:
    """A ref follows the latest sync; a later attempt restores it, and only new files go up."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cache = HashCache(tmp_path / "agent.sqlite")
    limits = TreeLimits(racy_window=0)
    assert await resolve_ref(store, "jobs/j1/checkpoints") is None
    (ckpt / "step-100.pt").write_bytes(os.urandom(50_000))
    first = await push_tree(store, ckpt, ref="jobs/j1/checkpoints", hash_cache=cache, limits=limits)
    (ckpt / "step-200.pt").write_bytes(os.urandom(70_000))
    second = await push_tree(store, ckpt, ref="jobs/j1/checkpoints", hash_cache=cache, limits=limits)
    assert (second.hashed_files, second.uploaded_blobs, second.uploaded_bytes) == (1, 1, 70_000)
    assert await resolve_ref(store, "jobs/j1/checkpoints") == second.digest != first.digest
    restored = tmp_path / "attempt2"
    await pull_tree(store, "jobs/j1/checkpoints", restored, blob_cache=BlobCache(tmp_path / "cache"))
    assert snapshot(restored) == snapshot(ckpt)


async def test_outputs_leave_out_excluded_patterns(store: ArtifactStore, tmp_path: Path) -> None:
    """`exclude` patterns (gitignore syntax) keep matching files out of an outputs tree."""
    out = tmp_path / "outputs"
    (out / "tmp").mkdir(parents=True)
    (out / "model.pt").write_bytes(b"m")
    (out / "tmp" / "scratch").write_bytes(b"s")
    (out / "log.txt").write_bytes(b"l")
    pushed = await push_tree(store, out, exclude=["tmp/", "*.txt"], ref="jobs/j1/outputs/1")
    _, manifest = await read_manifest(store, "jobs/j1/outputs/1")
    assert [e.path for e in manifest.entries] == ["model.pt"] and pushed.files == 1


async def test_a_file_edited_during_upload_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    """Content that no longer matches its hash when it is read for upload fails the push."""
    src = make_tree(tmp_path / "work")
    target = src / "weights.bin"

    def edit_before_uploads(done: int, total: int) -> None:
        if done == 0:  # hashing is over, no upload has started
            target.write_bytes(os.urandom(300_000))

    with pytest.raises(FileChanged, match=r"weights\.bin changed while it was uploaded"):
        await push_tree(store, src, progress=edit_before_uploads)
    assert await store.list("manifests/") == []


@pytest.mark.parametrize("name", ["weights.bin", "zero"])
async def test_a_file_replaced_by_rename_during_upload_goes_up_as_it_was_hashed(store: ArtifactStore,
                                                                                 tmp_path: Path, name: str) -> None:
    """A big file (read again from its open file) or a small one (kept from hashing) replaced by rename after
    hashing: the snapshot holds the version that was hashed, and the push succeeds."""
    src = make_tree(tmp_path / "work")
    hashed = (src / name).read_bytes()

    def replace_before_uploads(done: int, total: int) -> None:
        if done == 0:
            (src / "new").write_bytes(b"the next version")
            os.replace(src / "new", src / name)

    pushed = await push_tree(store, src, progress=replace_before_uploads)
    await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    assert (tmp_path / "out" / name).read_bytes() == hashed


async def test_a_corrupt_blob_in_the_store_is_caught_on_pull(store: ArtifactStore, tmp_path: Path) -> None:
    """Every blob is checked against its SHA-256 on the way down; a bad one never reaches the job."""
    src = make_tree(tmp_path / "work")
    pushed = await push_tree(store, src)
    _, manifest = await read_manifest(store, pushed.digest)
    victim = next(e for e in manifest.files if e.path == "weights.bin")
    await store.put_bytes(f"blobs/{victim.digest[:2]}/{victim.digest}", b"rotten")
    with pytest.raises(IntegrityError, match=victim.digest):
        await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    assert not (tmp_path / "cache" / victim.digest[:2] / victim.digest).exists()


async def test_unknown_trees_and_bad_manifests_are_clear_errors(store: ArtifactStore, tmp_path: Path) -> None:
    """A missing ref is NotFound; a manifest that would write outside its folder is refused."""
    with pytest.raises(NotFound, match="no ref jobs/nope"):
        await pull_tree(store, "jobs/nope", tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    from incl.artifacts import manifest as mf

    evil = mf.Manifest(entries=[mf.Entry(path="../escape", kind="file", size=1, digest="0" * 64)])
    data, digest = mf.encode(evil)
    await store.put_bytes(f"manifests/{digest}", data)
    with pytest.raises(InvalidManifest, match="escape"):
        await pull_tree(store, digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    assert not (tmp_path / "escape").exists()


async def test_pull_over_an_old_copy_never_writes_through_its_links(store: ArtifactStore, tmp_path: Path) -> None:
    """Whatever sits at an entry's path (a link to elsewhere, a folder, a file) is replaced, not written into."""
    src = make_tree(tmp_path / "work")
    digest = (await push_tree(store, src)).digest
    dest, elsewhere = tmp_path / "restore", tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest.mkdir()
    (dest / "src").symlink_to(elsewhere)  # where a folder goes
    (dest / "run.sh").mkdir()  # where a file goes
    (dest / "run.sh" / "junk").write_text("j")
    (dest / "latest").write_text("a file where a link goes")
    (dest / "unrelated.txt").write_text("kept")
    await pull_tree(store, digest, dest, blob_cache=BlobCache(tmp_path / "cache"))
    assert list(elsewhere.iterdir()) == []
    assert snapshot(dest) == {**snapshot(src), "unrelated.txt": ("file", 0o644, b"kept")}


async def test_a_fresh_machine_sends_only_what_a_big_store_lacks(store: ArtifactStore, tmp_path: Path) -> None:
    """A store too big to list whole: the first listed page is a sample that decides. A new tree's blobs go up
    unasked; a tree the store mostly holds is asked about, and only the edited file goes up."""
    rng = random.Random(1)
    others = [rng.randbytes(64) for _ in range(1200)]  # more than one LIST page of unrelated blobs
    await asyncio.gather(*(store.put_bytes(f"blobs/{d[:2]}/{d}", b) for b in others
                           for d in [hashlib.sha256(b).hexdigest()]))
    src = tmp_path / "work"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}.py").write_bytes(rng.randbytes(100))
    limits = TreeLimits(blobs_per_list_page=40)  # 40 unknown blobs: list one page
    first = await push_tree(store, src, limits=limits)
    assert first.uploaded_blobs == 40
    (src / "f7.py").write_bytes(b"edited")
    second = await push_tree(store, src, limits=limits)  # no hash cache: every blob unknown again
    assert (second.uploaded_blobs, second.uploaded_bytes) == (1, 6)
