#!/usr/bin/env python3
"""The fork server alone: N trivial jobs started one after another through `incl.agent.runtime.Launcher`.

    PYTHONPATH=TREE/build/pkg .venv/bin/python bench/launcher_jobs.py --n 300 [--no-cgroups] [-- ARGV...]

Prints one JSON object: the CPU per job of the job's whole process tree (the fork server, the guard it forks, the
command; counted when the fork server exits, which reaps them all), the agent side's own CPU per job, and the
p50 wall time from the start request to the pid and to the exit. Run it alternately against two trees (their
`build/pkg` first on PYTHONPATH) to compare guards: the whole-stack benchmark (incl_side.py) mixes this cost with
the controller's, the agents' and NATS's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import time

from incl.agent.runtime import Launcher
from incl.proto.messages import Stream


async def _sink(stream: Stream, chunk: bytes) -> None:
    return None


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def run(n: int, argv: list[str], cgroups: bool) -> dict:
    env = dict(os.environ)
    started, ended = [], []
    async with Launcher(cgroups=cgroups) as launcher:
        await asyncio.sleep(0.3)  # the fork server's own start-up is not a job's
        own = _cpu(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(n):
            a = time.perf_counter()
            handle = await launcher.start(argv, "/tmp", env, _sink)
            started.append(time.perf_counter() - a)
            await handle.wait(5.0)
            ended.append(time.perf_counter() - a)
        wall = time.perf_counter() - t0
        own = _cpu(resource.RUSAGE_SELF) - own
    tree = _cpu(resource.RUSAGE_CHILDREN)  # the fork server and everything it reaped, its start-up included
    return {"n": n, "argv": argv, "cgroups": cgroups, "wall_ms_per_job": round(1000 * wall / n, 2),
            "start_p50_ms": round(1000 * statistics.median(started), 2),
            "start_to_exit_p50_ms": round(1000 * statistics.median(ended), 2),
            "agent_cpu_ms_per_job": round(1000 * own / n, 2), "job_tree_cpu_ms_per_job": round(1000 * tree / n, 2),
            "loadavg": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--no-cgroups", action="store_true", help="no per-job cgroup (the subreaper alone)")
    p.add_argument("argv", nargs="*", default=["/bin/bash", "-c", "true"])
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args.n, args.argv, not args.no_cgroups))))


if __name__ == "__main__":
    main()
