#!/usr/bin/env python3
"""Big workdirs (issue 10): 100,000 small files through push_tree and pull_tree on a file:// store.

    .venv/bin/python bench/bigtree.py                    # 100,000 files, N = 3
    .venv/bin/python bench/bigtree.py --files 20000 --reps 5

The tree: `--files` files of `v<i>\\n` (about 7 bytes each, all different, ~680 KB in all) in nested folders
(10 x 10 x 10, 100 files per leaf folder), made once per run under a temp dir.

Steps, each repeated `--reps` times (medians reported), each rep with a fresh $INCL_HOME-like folder:
  upload first      push_tree(gitignore=True) into a fresh file:// store (fsync on, as `incl up` runs it) with
                    a fresh hash cache: what `incl submit` does after it has asked the controller for the store
  upload again      the same, the tree unchanged, hash cache warm
  pull cold         pull_tree into a fresh folder from an empty blob cache (what an agent does for a new job)
  pull warm         the same into another fresh folder, blob cache warm (the next job on that instance)
  loop gap          the longest the event loop went without running a 10 ms ticker during the pulls
  disk              bytes on disk (st_blocks) of the store, the CLI's hash cache, the agent's blob cache and one
                    job's code folder

Results on stdout, and bench/results/bigtree.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from incl.artifacts import BlobCache, HashCache, open_store, pull_tree, push_tree

REPO = Path(__file__).resolve().parents[1]


def make_tree(root: Path, files: int) -> int:
    """`files` files of about 7 bytes in 10 x 10 x 10 folders; returns the bytes written."""
    total = 0
    per_leaf = max(1, -(-files // 1000))
    for i in range(files):
        leaf = i // per_leaf
        folder = root / f"a{leaf // 100}" / f"b{leaf // 10 % 10}" / f"c{leaf % 10}"
        if i % per_leaf == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = f"v{i}\n".encode()
        (folder / f"f{i}.txt").write_bytes(data)
        total += len(data)
    return total


def disk_used(path: Path) -> int:
    """Bytes allocated on disk under `path` (folders included), as `du` counts them."""
    if not path.exists():
        return 0
    total = path.lstat().st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


class Ticker:
    """The longest gap between runs of a coroutine that asks to run every `every` seconds."""

    def __init__(self, every: float = 0.01) -> None:
        self.every, self.max_gap = every, 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.every)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last - self.every)
            last = now

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def one_rep(tree: Path, home: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    hashes = HashCache(home / "cache" / "hashes.sqlite")
    async with open_store(f"file://{home}/store") as store:
        t = time.perf_counter()
        first = await push_tree(store, tree, gitignore=True, hash_cache=hashes)
        out["upload_first_s"] = time.perf_counter() - t
        t = time.perf_counter()
        again = await push_tree(store, tree, gitignore=True, hash_cache=hashes)
        out["upload_again_s"] = time.perf_counter() - t
        assert again.digest == first.digest and again.uploaded_bytes == 0, again
        blobs = BlobCache(home / "agent" / "cache" / "blobs")
        async with Ticker() as ticker:
            t = time.perf_counter()
            cold = await pull_tree(store, first.digest, home / "agent" / "job1" / "code", blob_cache=blobs)
            out["pull_cold_s"] = time.perf_counter() - t
            t = time.perf_counter()
            await pull_tree(store, first.digest, home / "agent" / "job2" / "code", blob_cache=blobs)
            out["pull_warm_s"] = time.perf_counter() - t
        out["loop_gap_max_s"] = ticker.max_gap
        assert cold.files == first.files
    out["disk_store_mb"] = disk_used(home / "store") / 1e6
    out["disk_hash_cache_mb"] = disk_used(home / "cache") / 1e6
    out["disk_blob_cache_mb"] = disk_used(home / "agent" / "cache") / 1e6
    out["disk_code_dir_mb"] = disk_used(home / "agent" / "job1" / "code") / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bigtree.json")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="incl-bigtree-") as tmp:
        tree = Path(tmp) / "work"
        t = time.perf_counter()
        size = make_tree(tree, args.files)
        print(f"tree: {args.files} files, {size} bytes, made in {time.perf_counter() - t:.1f} s", flush=True)
        reps: list[dict[str, float]] = []
        for n in range(args.reps):
            home = Path(tmp) / f"home{n}"
            reps.append(asyncio.run(one_rep(tree, home)))
            print(f"rep {n + 1}: " + ", ".join(f"{k}={v:.2f}" for k, v in reps[-1].items()), flush=True)
            shutil.rmtree(home)
    medians: dict[str, Any] = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
    print(f"medians of {args.reps}: " + ", ".join(f"{k}={v:.2f}" for k, v in medians.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"files": args.files, "bytes": size, "python": sys.version.split()[0],
                                    "reps": reps, "medians": medians}, indent=2) + "\n")


if __name__ == "__main__":
    main()
