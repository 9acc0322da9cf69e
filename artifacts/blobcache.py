"""An instance-local cache of blobs, shared by every job on the instance (and by concurrent pulls).

A blob enters the cache through a temp file and a rename, after its SHA-256 was checked on the way in, so a
reader never sees a partial or corrupt blob; two pulls fetching the same blob at once both succeed. Jobs get
copies, never links: a job that writes to its code must not change the cache.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from incl.artifacts.batches import run_all
from incl.artifacts.refs import blob_key
from incl.artifacts.store import ArtifactStore


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"BlobCache({str(self.root)!r})"

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def _lacks(self, blobs: dict[str, int]) -> dict[str, int]:
        lacking = {}
        for digest, size in blobs.items():
            try:
                if os.stat(self.path(digest)).st_size == size:
                    continue
            except FileNotFoundError:
                pass
            lacking[digest] = size
        return lacking

    async def fill(self, store: ArtifactStore, blobs: dict[str, int],
                   progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
        """Fetch the blobs (digest → size) that the cache lacks; return those it fetched. `progress` is called
        with (bytes fetched so far, bytes to fetch)."""
        lacking = await asyncio.to_thread(self._lacks, blobs)
        total, done = sum(lacking.values()), 0

        async def fetch(digest: str) -> None:
            nonlocal done
            size = await store.get_file(blob_key(digest), self.path(digest), sha256=digest)
            done += size  # after the await: other fetches move `done` meanwhile
            if progress is not None:
                progress(done, total)

        await run_all(fetch(d) for d in lacking)
        return lacking
