#!/usr/bin/env python3
"""Submit latency as the queue grows: N jobs submitted to a stack with no agent (so every one stays queued),
C in flight, in blocks of 1,000; prints each block's wall time and submit latency p50/p99.

    .venv/bin/python bench/queue_depth.py [--n 6000] [--concurrency 16]

Each submit wakes a placement pass over the whole queue: this shows what a long queue costs the API.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from incl_side import USER, Stack

from incl.bus.client import Client
from incl.proto.spec import load_spec


async def measure(url: str, n: int, concurrency: int) -> None:
    async with Client(url, timeout=30.0) as client:
        spec, lat = load_spec({"run": "true"}), []
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                t = time.perf_counter()
                await client.submit(spec, USER)
                lat.append(time.perf_counter() - t)

        for block in range(n // 1000):
            t0 = time.perf_counter()
            await asyncio.gather(*(one() for _ in range(1000)))
            last = sorted(lat[-1000:])
            print(f"queued {(block + 1) * 1000:6d}: block {time.perf_counter() - t0:6.1f} s, submit p50 "
                  f"{last[500] * 1000:5.0f} ms, p99 {last[990] * 1000:5.0f} ms", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    stack = Stack(0, 1, keep=False)
    stack.up()
    try:
        asyncio.run(measure(stack.url, args.n, args.concurrency))
    finally:
        stack.down()


if __name__ == "__main__":
    main()
