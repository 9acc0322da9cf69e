"""Packs: thousands of small files stored as a few objects instead of one blob each.

A tree holding at least TreeLimits.pack_min_files distinct small contents (each at most pack_file_max bytes)
stores them in packs of about pack_bytes: one PUT, one store object, one cache file and one inode per pack
rather than per file (100,000 files of 7 bytes were 100,000 fsynced PUTs and 2 GB of 4 KiB blocks).

Which contents share a pack depends only on the set of contents: they are spread over 2^k buckets by the
leading bits of their digest (2^k the smallest power of two that keeps a bucket under pack_bytes on average),
and a bucket's members are concatenated in digest order. So the same tree gives the same packs on every
machine (its id stays deterministic), and editing one file changes at most two packs.

A pack is named by the SHA-256 of its index (each member's digest and size, in order). That names its bytes as
exactly as a blob's digest does (each member is named by its own SHA-256), and push computes it from the hash
cache without reading a file again. Every member's bytes are checked against its SHA-256 when the pack enters
a blob cache (blobcache.py), so a job never sees a byte that was not checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from incl.artifacts.config import TreeLimits
from incl.artifacts.errors import FileChanged, IntegrityError

_ID_PREFIX = b"incl-pack-1\n"


class Member(NamedTuple):
    digest: str
    size: int


class Pack(NamedTuple):
    id: str
    members: list[Member]  # in pack order

    def offsets(self) -> dict[str, int]:
        out, at = {}, 0
        for m in self.members:
            out[m.digest] = at
            at += m.size
        return out

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)


def pack_id(members: Iterable[Member]) -> str:
    return hashlib.sha256(_ID_PREFIX + "".join(f"{m.digest} {m.size}\n" for m in members).encode()).hexdigest()


def plan(sizes: Mapping[str, int], limits: TreeLimits) -> list[Pack]:
    """The packs for a tree's distinct contents (digest → size); none when it has too few small ones."""
    small = {d: s for d, s in sizes.items() if s <= limits.pack_file_max}
    if len(small) < limits.pack_min_files:
        return []
    buckets = 1
    while sum(small.values()) > buckets * limits.pack_bytes:
        buckets *= 2
    grouped: list[list[Member]] = [[] for _ in range(buckets)]
    for d in sorted(small):
        grouped[int(d[:8], 16) * buckets >> 32].append(Member(d, small[d]))
    return [Pack(pack_id(g), g) for g in grouped if g]


def build(pack: Pack, contents: Mapping[str, bytes], read: Callable[[str], tuple[str, bytes]]) -> bytes:
    """The pack's bytes: `contents` kept from hashing (digest → bytes), else `read(digest)` (the path named in
    errors, and the bytes, read again from the file that was hashed) checked against the digest: what goes up is
    exactly what was hashed (blocking: run it in a thread)."""
    parts = []
    for m in pack.members:
        if (kept := contents.get(m.digest)) is not None:
            parts.append(kept)
            continue
        path, data = read(m.digest)
        if len(data) != m.size or hashlib.sha256(data).hexdigest() != m.digest:
            raise FileChanged.while_uploading(path)
        parts.append(data)
    return b"".join(parts)


def verify(pack: str, data: bytes | memoryview, members: Iterable[tuple[int, int, str]]) -> None:
    """IntegrityError unless each member (offset, size, digest) of the fetched pack hashes to its digest."""
    view = memoryview(data)
    for offset, size, digest in members:
        if offset + size > len(view) or hashlib.sha256(view[offset:offset + size]).hexdigest() != digest:
            raise IntegrityError(f"pack {pack}: the bytes of {digest} at {offset} do not hash to it: the stored "
                                 "pack is corrupt", path=pack)
