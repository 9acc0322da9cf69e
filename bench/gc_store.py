"""How long `incl gc` takes on a store of N blobs: half in trees of kept jobs, half in trees of expired ones.

    python bench/gc_store.py --blobs 20000 --trees 200 [--store file:///tmp/gcbench]

Runs a mark (everything expired becomes a candidate) and then a sweep (the candidates go), timing each.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time

from incl.artifacts import manifest as mf
from incl.artifacts.config import GcConfig, StoreConfig
from incl.artifacts.gcroots import Roots
from incl.artifacts.gcrun import collect
from incl.artifacts.refs import blob_key, manifest_key
from incl.artifacts.store import open_store


async def main(url: str, blobs: int, trees: int) -> None:
    per_tree = blobs // trees
    live: set[str] = set()
    async with open_store(url, config=StoreConfig(fsync=False)) as store:
        for t in range(trees):
            entries = []
            for b in range(per_tree):
                data = f"{t}-{b}".encode() * 64
                digest = hashlib.sha256(data).hexdigest()
                await store.put_bytes(blob_key(digest), data)
                entries.append(mf.Entry(path=f"f{b}", kind="file", size=len(data), digest=digest))
            body, digest = mf.encode(mf.build(entries))
            await store.put_bytes(manifest_key(digest), body)
            if t % 2 == 0:
                live.add(digest)

        async def roots(now: float) -> Roots:
            return Roots(set(), set(live))

        config = GcConfig(grace=60.0)
        now = time.time() + 120
        mark = await collect(store, roots, config=config, now=now)
        sweep = await collect(store, roots, config=config, now=now + 61)
    print(f"{blobs} blobs in {trees} trees at {url}: mark {mark.seconds:.2f}s ({mark.candidates} candidates), "
          f"sweep {sweep.seconds:.2f}s ({sum(sweep.deleted.values())} objects, {sweep.deleted_bytes} bytes deleted)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--blobs", type=int, default=20000)
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument("--store")
    args = parser.parse_args()
    asyncio.run(main(args.store or f"file://{tempfile.mkdtemp(prefix='gcbench-')}", args.blobs, args.trees))
