"""Outputs read as the web UI reads them: one file streamed, a folder as a tar archive written chunk by chunk,
packed files included, and corrupt bytes cut the stream short."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from incl.artifacts import StoreConfig, TreeLimits, open_store, push_tree
from incl.artifacts.browse import Archive, items, read, under
from incl.artifacts.errors import IntegrityError, NotFound
from incl.artifacts.refs import blob_key
from incl.artifacts.store import ArtifactStore

PACKING = TreeLimits(pack_min_files=20, pack_bytes=2048, racy_window=0)
SMALL = StoreConfig(fsync=False, chunk_size=4096)


def make(root: Path) -> dict[str, bytes]:
    files = {f"small/f{i:02}.txt": f"file {i}\n".encode() * (i + 1) for i in range(30)}
    files["ckpt/big.bin"] = os.urandom(100_000)
    files["ckpt/best/model.pt"] = os.urandom(9_000)
    files["ünïcode name.txt"] = b"hello"
    files["empty"] = b""
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return files


async def collect(chunks: object) -> tuple[bytes, int]:
    out, count = [], 0
    async for chunk in chunks:  # type: ignore[attr-defined]
        out.append(chunk)
        count += 1
    return b"".join(out), count


@pytest.fixture
async def tree(tmp_path: Path) -> tuple[ArtifactStore, str, dict[str, bytes]]:
    files = make(tmp_path / "src")
    async with open_store(f"file://{tmp_path}/store", config=SMALL) as store:
        pushed = await push_tree(store, tmp_path / "src", limits=PACKING)
        yield store, pushed.digest, files


async def test_every_file_streams_byte_identical_in_chunks(tree: tuple[ArtifactStore, str, dict[str, bytes]]) -> None:
    store, digest, files = tree
    listing = await items(store, [("", digest)])
    assert {i.path for i in listing if i.kind == "file"} == set(files)
    assert any(i.pack for i in listing)  # the small files came from packs
    for item in listing:
        if item.kind == "file":
            data, _ = await collect(read(store, item))
            assert data == files[item.path]
    big = next(i for i in listing if i.path == "ckpt/big.bin")
    # one chunk of the store's size at a time
    assert big.pack is None and (await collect(read(store, big)))[1] == -(-100_000 // 4096)


async def test_a_folder_archive_holds_every_file_and_its_announced_length(
        tree: tuple[ArtifactStore, str, dict[str, bytes]]) -> None:
    store, digest, files = tree
    listing = await items(store, [("", digest), ("rank-1/", digest)])
    for root, top in [("ckpt", "ckpt"), ("ckpt/best", "best"), ("", "j-1")]:
        archive = Archive(under(listing, root), root, top, mtime=1_700_000_000)
        data, count = await collect(archive.chunks(store))
        assert len(data) == archive.size and count > 3
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
        cut = len(root) + 1 if root else 0
        want = {f"{top}/{p[cut:]}": d for p, d in files.items() if not root or p.startswith(root + "/")}
        if not root:
            want |= {f"{top}/rank-1/{p}": d for p, d in files.items()}
        assert got == want


async def test_a_path_outside_the_outputs_names_nothing(tree: tuple[ArtifactStore, str, dict[str, bytes]]) -> None:
    store, digest, _ = tree
    listing = await items(store, [("", digest)])
    for bad in ["../etc/passwd", "nope", "ckpt/../../x", "ck"]:
        with pytest.raises(NotFound):
            under(listing, bad)
    assert [i.path for i in under(listing, "/ckpt/best/")] == ["ckpt/best", "ckpt/best/model.pt"]


async def test_corrupt_bytes_end_the_stream_with_an_error(tree: tuple[ArtifactStore, str, dict[str, bytes]],
                                                         tmp_path: Path) -> None:
    store, digest, _ = tree
    big = next(i for i in await items(store, [("", digest)]) if i.path == "ckpt/big.bin")
    path = tmp_path / "store" / blob_key(big.entry.digest)
    path.write_bytes(b"x" + path.read_bytes()[1:])
    with pytest.raises(IntegrityError):
        await collect(read(store, big))
