"""An instance-local cache of blobs and packs, shared by every job on the instance (and by concurrent pulls).

    <root>/<first 2 hex>/<sha256>         a blob
    <root>/packs/<first 2 hex>/<id>       a pack (packs.py)

A blob or pack enters the cache through a temp file and a rename, after its bytes were checked on the way in
(a blob against its SHA-256, a pack member by member), so a reader never sees a partial or corrupt one; two
pulls fetching the same one at once both succeed. Jobs get copies, never hard links: a job may write to its
code in place (in a container it runs as root, so no mode bit stops it), and through a link that would change
the cache under every later job. Copies stay cheap: small files come out of a pack already in memory, big
ones are reflinked where the filesystem can (pull.py).

A cache kept under a size (cachetrim.py) is given the attempt folder to pin in (`pin_in`): a fill then lists what
it needs there before it looks, and touches what it finds, so the least recently used go first.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from incl.artifacts import cachetrim
from incl.artifacts import packs as pk
from incl.artifacts.atomic import TEMP_PREFIX
from incl.artifacts.batches import each
from incl.artifacts.refs import blob_key, pack_key
from incl.artifacts.store import ArtifactStore

Members = list[tuple[int, int, str]]  # a pack's members a tree uses: (offset, size, digest)


class BlobCache:
    def __init__(self, root: Path, *, pin_in: Path | None = None) -> None:
        self.root = Path(root)
        self.pin_in = pin_in

    def __repr__(self) -> str:
        return f"BlobCache({str(self.root)!r})"

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def pack_path(self, pack: str) -> Path:
        return self.root / "packs" / pack[:2] / pack

    def _lacks(self, wanted: list[tuple[Path, str, int]]) -> dict[str, int]:
        if self.pin_in is not None:
            cachetrim.pin(self.pin_in, (path for path, _, _ in wanted))
        lacking = {}
        for path, name, size in wanted:
            try:
                if os.stat(path).st_size == size:
                    if self.pin_in is not None:
                        os.utime(path)  # used now: the last to be evicted
                    continue
            except FileNotFoundError:
                pass
            lacking[name] = size
        return lacking

    async def fill(self, store: ArtifactStore, blobs: dict[str, int],
                   progress: Callable[[int, int], None] | None = None, *,
                   packs: dict[str, Members] | None = None, workers: int = 64) -> dict[str, int]:
        """Fetch the blobs (digest → size) and packs (id → the members used) that the cache lacks; return
        those it fetched (digest or id → size). `progress` is called with (bytes fetched so far, bytes to
        fetch)."""
        packs = packs or {}
        pack_sizes = {p: max((o + s for o, s, _ in m), default=0) for p, m in packs.items()}
        lacking = await asyncio.to_thread(self._lacks, [
            *((self.path(d), d, s) for d, s in blobs.items()),
            *((self.pack_path(p), p, s) for p, s in pack_sizes.items())])
        total, done = sum(lacking.values()), 0

        async def fetch(name: str) -> None:
            nonlocal done
            if name in packs:
                size = await self._fetch_pack(store, name, packs[name])
            else:
                size = await store.get_file(blob_key(name), self.path(name), sha256=name)
            done += size  # after the await: other fetches move `done` meanwhile
            if progress is not None:
                progress(done, total)

        await each(lacking, fetch, workers)
        return lacking

    async def _fetch_pack(self, store: ArtifactStore, pack: str, members: Members) -> int:
        final = self.pack_path(pack)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TEMP_PREFIX}{pack[:16]}-{uuid.uuid4().hex}"
        try:
            size = await store.get_file(pack_key(pack), tmp)
            await asyncio.to_thread(self._check_in, pack, tmp, final, members)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    @staticmethod
    def _check_in(pack: str, tmp: Path, final: Path, members: Members) -> None:
        pk.verify(pack, tmp.read_bytes(), members)
        os.replace(tmp, final)
