"""Packs (issue 10): a tree of many small files goes up and comes down as a few pack objects, with every
guarantee a blob per file had: byte-identical round trips, sha256 checks, edits caught during upload."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from test_artifacts_tree import make_tree, snapshot

from incl.artifacts import BlobCache, HashCache, StoreConfig, TreeLimits, open_store, pull_tree, push_tree
from incl.artifacts import manifest as mf
from incl.artifacts.errors import FileChanged, IntegrityError
from incl.artifacts.refs import manifest_key
from incl.artifacts.store import ArtifactStore

PACKING = TreeLimits(pack_min_files=20, pack_bytes=2048, racy_window=0)  # a few small files make packs


def many_small(root: Path, n: int = 300) -> Path:
    make_tree(root)  # modes, symlinks, an empty file, a big file (a blob of its own)
    rng = random.Random(3)
    for i in range(n):
        folder = root / "many" / f"d{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}.py").write_bytes(rng.randbytes(rng.randrange(1, 40)))
    (root / "many" / "same1").write_bytes(b"dup\n")  # equal contents: one member of a pack
    (root / "many" / "same2").write_bytes(b"dup\n")
    return root


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    async with open_store(f"file://{tmp_path}/store", config=StoreConfig(fsync=False)) as s:
        yield s


async def test_packed_round_trip_is_byte_identical_in_a_few_objects(store: ArtifactStore, tmp_path: Path) -> None:
    """300 small files come back byte for byte with their modes, stored as a few packs, not a blob each."""
    src = many_small(tmp_path / "work")
    pushed = await push_tree(store, src, limits=PACKING)
    assert pushed.packs >= 2 and pushed.uploaded_blobs == pushed.packs + 1  # the packs and weights.bin
    assert len(await store.list("blobs/")) == 1
    cache = BlobCache(tmp_path / "cache")
    first = await pull_tree(store, pushed.digest, tmp_path / "job1", blob_cache=cache)
    second = await pull_tree(store, pushed.digest, tmp_path / "job2", blob_cache=cache)
    assert snapshot(tmp_path / "job1") == snapshot(tmp_path / "job2") == snapshot(src)
    assert first.downloaded_blobs == pushed.uploaded_blobs and second.downloaded_blobs == 0


async def test_packed_tree_ids_are_deterministic_and_an_edit_resends_at_most_two_packs(
        store: ArtifactStore, tmp_path: Path) -> None:
    """Two machines packing the same tree get the same id; editing one small file sends one or two packs."""
    src = many_small(tmp_path / "work")
    cache = HashCache(tmp_path / "laptop.sqlite")
    first = await push_tree(store, src, hash_cache=cache, limits=PACKING)
    assert (await push_tree(store, src, hash_cache=HashCache(tmp_path / "ci.sqlite"), limits=PACKING)).digest \
        == first.digest
    again = await push_tree(store, src, hash_cache=cache, limits=PACKING)
    assert (again.digest, again.hashed_files, again.uploaded_blobs) == (first.digest, 0, 0)
    (src / "many" / "d3" / "f3.py").write_bytes(b"edited\n")
    edited = await push_tree(store, src, hash_cache=cache, limits=PACKING)
    assert edited.hashed_files == 1 and 1 <= edited.uploaded_blobs <= 2 < first.uploaded_blobs
    await pull_tree(store, edited.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    assert snapshot(tmp_path / "out") == snapshot(src)


@pytest.mark.xfail(strict=False, reason="known defect: under load, a failed pull can leave .tmp- files from the "
                   "fetches it cancelled (their worker threads finish after the cancel); the corrupt pack itself is "
                   "never cached")
async def test_a_corrupt_pack_is_caught_and_never_cached(store: ArtifactStore, tmp_path: Path) -> None:
    """A pack whose bytes no longer match its members' SHA-256s fails the pull and never enters the cache."""
    src = many_small(tmp_path / "work")
    pushed = await push_tree(store, src, limits=PACKING)
    victim = (await store.list("packs/"))[0]
    data = bytearray(await store.get_bytes(victim.key))
    data[len(data) // 2] ^= 0xFF
    await store.put_bytes(victim.key, bytes(data))
    with pytest.raises(IntegrityError, match=victim.key.rsplit("/", 1)[-1]):
        await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    cached = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert victim.key.rsplit("/", 1)[-1] not in cached and not [n for n in cached if n.startswith(".tmp-")]


@pytest.mark.parametrize("how", ["edit", "touch"])
async def test_a_small_file_changed_during_a_packed_upload_goes_up_as_it_was_read(store: ArtifactStore,
                                                                                   tmp_path: Path, how: str) -> None:
    """A packed file edited or touched after it was hashed: the pack holds the bytes kept from that one read, so
    the push succeeds and the snapshot is the version that was read."""
    src = many_small(tmp_path / "work")
    target = src / "many" / "d1" / "f1.py"
    hashed = target.read_bytes()

    def change_before_uploads(done: int, total: int) -> None:
        if done == 0:
            if how == "edit":
                target.write_bytes(b"changed behind our back")
            else:
                os.utime(target, ns=(1, 1))

    pushed = await push_tree(store, src, progress=change_before_uploads, limits=PACKING)
    await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
    assert (tmp_path / "out" / "many" / "d1" / "f1.py").read_bytes() == hashed


async def test_a_small_file_edited_in_place_before_it_is_read_again_for_its_pack_is_refused(
        store: ArtifactStore, tmp_path: Path) -> None:
    """With no bytes kept from hashing, a pack reads its members again from their open files: one edited in place
    meanwhile no longer matches its hash, so the push fails and no manifest is stored."""
    src = many_small(tmp_path / "work")
    target = src / "many" / "d1" / "f1.py"

    def edit_before_uploads(done: int, total: int) -> None:
        if done == 0:
            with open(target, "r+b") as f:
                f.write(b"!")

    with pytest.raises(FileChanged, match=r"f1\.py changed while it was uploaded"):
        await push_tree(store, src, progress=edit_before_uploads, limits=msgspec.structs.replace(
            PACKING, pack_keep_bytes=0))
    assert await store.list("manifests/") == []


async def test_only_packed_trees_use_manifest_version_2(store: ArtifactStore, tmp_path: Path) -> None:
    """A tree without packs keeps the version-1 manifest (same id as before, readable by older agents)."""
    few = await push_tree(store, make_tree(tmp_path / "few"), limits=PACKING)
    many = await push_tree(store, many_small(tmp_path / "many"), limits=PACKING)
    old = mf.decode(await store.get_bytes(manifest_key(few.digest)), few.digest)
    new = mf.decode(await store.get_bytes(manifest_key(many.digest)), many.digest)
    assert (old.version, old.pack_ids, new.version) == (1, [], 2) and len(new.pack_ids) == many.packs
    assert b"packs" not in await store.get_bytes(manifest_key(few.digest))


async def test_a_job_writing_a_packed_file_does_not_change_the_next_job(store: ArtifactStore, tmp_path: Path) -> None:
    """Packed files are written as copies: a job scribbling on one leaves the cache and the next job intact."""
    src = many_small(tmp_path / "work")
    digest = (await push_tree(store, src, limits=PACKING)).digest
    cache = BlobCache(tmp_path / "cache")
    await pull_tree(store, digest, tmp_path / "job1", blob_cache=cache)
    (tmp_path / "job1" / "many" / "same1").write_bytes(b"scribbled")
    await pull_tree(store, digest, tmp_path / "job2", blob_cache=cache)
    assert snapshot(tmp_path / "job2") == snapshot(src)
