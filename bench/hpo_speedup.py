#!/usr/bin/env python3
"""HPO wall-clock speed-up: time to reach a target regret with 1, 4, 8 and 16 trials in flight on local agents.

    .venv/bin/python bench/hpo_speedup.py                          # seeds 0-4; 1 s trials (about 6 min)
    .venv/bin/python bench/hpo_speedup.py --seeds 0,1,2,3,4 --sleep 1.0 --parallel 1,4,8,16
    .venv/bin/python bench/hpo_speedup.py --calibrate              # Optuna alone: trials to each regret, in-process

The problem: minimise (X - 1.5)^2 + (Y + 0.5)^2 over [-4, 4]^2 (optimum 0, so regret = the best value).
A trial sleeps `--sleep` seconds, then logs its value with incl.log. One embedded stack (incl_side.Stack:
`incl up --agents 2 --cpus 8`, trials `resources: {cpus: 1}`, so 16 fit at once) serves every study. For each
seed, a study per parallelism, sampler `tpe` with `seed:` that seed, `trials: --max-trials`; the study is
stopped (its running trials cancelled) as soon as its best value is at or below the target.

The target regret (`--target`, default 0.1) is one that sequential TPE reaches in roughly 20-40 trials on
this problem (`--calibrate` shows Optuna's own trials-to-target at a few thresholds, in flight 1, no INCL:
at 0.1, a median of 29.5 over seeds 0-9, from 14 to 36).

From the study's trials (the time each was told, Optuna's datetime_complete), per parallelism and seed:
  time to target   = the first tell of a value <= target, minus the moment before submit_study;
  trials to target = the trials told by then.
More in flight means each new trial is sampled with fewer finished results, so trials to target rises with
parallelism: both are reported. speed-up = median time at 1 / median time at P; efficiency = speed-up / P.
ideal = median trials to target / P x the sleep (what those trials would take with no platform time at all);
platform efficiency = ideal / time: the part of the shortfall that is INCL's, not the sampler's.
Writes bench/results/hpo_speedup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hpo_overhead import USER, study_spec, wait_study  # noqa: E402
from incl_side import Stack, wait_terminal  # noqa: E402
from stats import median  # noqa: E402

from incl.bus.client import Client  # noqa: E402
from incl.proto.spec import load_spec  # noqa: E402
from incl.proto.studies import TrialState  # noqa: E402

PARAMS = {"X": {"type": "float", "low": -4.0, "high": 4.0}, "Y": {"type": "float", "low": -4.0, "high": 4.0}}
TRIAL_CODE = ("import incl, os, sys, time; time.sleep(float(sys.argv[1])); "
              "x, y = float(os.environ['X']), float(os.environ['Y']); "
              "incl.log({'loss': (x - 1.5) ** 2 + (y + 0.5) ** 2})")


def log(*a: object) -> None:
    print("[hpo_speedup]", *a, file=sys.stderr, flush=True)


def loss(x: float, y: float) -> float:
    return (x - 1.5) ** 2 + (y + 0.5) ** 2


async def until_target(client: Client, study_id: str, target: float, timeout: float) -> None:
    """Stop the study (cancelling its running trials) once its best value reaches the target."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for s in await client.studies(user=USER):
            if s.study.id != study_id:
                continue
            if (s.best_value is not None and s.best_value <= target) or s.study.reason or s.study.ended_at:
                if s.study.ended_at is None:
                    await client.stop_study(study_id, cancel=True)
                return
        await asyncio.sleep(0.1)


async def one_study(client: Client, args: argparse.Namespace, parallel: int, seed: int) -> dict[str, Any]:
    run = f"{shlex.quote(args.trial_python)} -c {shlex.quote(TRIAL_CODE)} {args.sleep:g}"
    spec = load_spec(study_spec(run, args.max_trials, parallel, "tpe", seed, PARAMS))
    t0 = time.time()
    study = await client.submit_study(spec, user=USER)
    await until_target(client, study.id, args.target, args.timeout)
    await wait_study(client, study.id, 0.2, args.timeout)
    reply = await client.study(study.id)
    told = sorted((t.ended_at, t.value) for t in reply.trials
                  if t.state is TrialState.COMPLETE and t.value is not None and t.ended_at is not None)
    hit = next((i for i, (_, v) in enumerate(told) if v <= args.target), None)
    res: dict[str, Any] = {"parallel": parallel, "seed": seed, "study_id": study.id, "trials_told": len(told),
                           "best": reply.summary.best_value, "reached": hit is not None}
    if hit is not None:
        res.update({"time_to_target_s": round(told[hit][0] - t0, 3), "trials_to_target": hit + 1})
    log(f"P={parallel} seed={seed}: {res.get('time_to_target_s')} s, {res.get('trials_to_target')} trials")
    return res


async def measure(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = []
    async with Client(stack.url, timeout=30.0) as client:
        for _ in range(3):
            j = await client.submit(load_spec({"run": "true"}), "warmup")
            await wait_terminal(client, j.id, 0.01)
        for seed in args.seeds:
            order = args.parallel if seed % 2 == 0 else list(reversed(args.parallel))
            for p in order:
                out.append(await one_study(client, args, p, seed))
    return out


def table(runs: list[dict[str, Any]], parallel: list[int], sleep: float) -> list[dict[str, Any]]:
    rows = []
    base = None
    for p in parallel:
        rs = [r for r in runs if r["parallel"] == p]
        times = [r["time_to_target_s"] for r in rs if r["reached"]]
        trials = [r["trials_to_target"] for r in rs if r["reached"]]
        t = round(median(times), 2) if times else None
        if p == parallel[0]:
            base = t
        speed = round(base / t, 2) if base and t else None
        n = median(trials) if trials else None
        # the time the trials to target would take with no platform time at all: n / p rounds of one sleep
        ideal = round(n * sleep / p, 2) if n else None
        rows.append({"parallel": p, "time_to_target_s": t, "trials_to_target": n,
                     "speedup": speed, "efficiency": round(speed / p * parallel[0], 2) if speed else None,
                     "ideal_s": ideal, "platform_efficiency": round(ideal / t, 2) if ideal and t else None,
                     "reached": f"{len(times)}/{len(rs)}", "times": times, "trials": trials})
    return rows


def render(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [f"== HPO speed-up: time to regret <= {args.target:g}, {args.sleep:g} s trials, tpe, medians over seeds "
           f"{','.join(map(str, args.seeds))} ==",
           f"{'in flight':>9} {'time (s)':>9} {'trials':>7} {'speed-up':>9} {'efficiency':>10} {'ideal (s)':>9} "
           f"{'platform eff':>12} {'reached':>8}  times / trials per seed"]
    for r in rows:
        out.append(f"{r['parallel']:>9} {r['time_to_target_s'] or '-':>9} {r['trials_to_target'] or '-':>7} "
                   f"{(str(r['speedup']) + 'x') if r['speedup'] else '-':>9} {r['efficiency'] or '-':>10} "
                   f"{r['ideal_s'] or '-':>9} {r['platform_efficiency'] or '-':>12} {r['reached']:>8}  {r['times']} / {r['trials']}")
    return "\n".join(out)


def calibrate(args: argparse.Namespace) -> int:
    """Optuna alone, in-process, 1 in flight: trials to reach each threshold, per seed (no INCL involved)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    thresholds = [0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
    hits: dict[float, list[int]] = {t: [] for t in thresholds}
    for seed in range(args.calibrate_seeds):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        best, seen = float("inf"), set()
        for n in range(1, 151):
            trial = study.ask()
            v = loss(trial.suggest_float("X", -4, 4), trial.suggest_float("Y", -4, 4))
            study.tell(trial, v)
            best = min(best, v)
            for t in thresholds:
                if best <= t and t not in seen:
                    seen.add(t)
                    hits[t].append(n)
    for t in thresholds:
        print(f"regret <= {t:<5g}: median {median(hits[t]) if hits[t] else '-'} trials "
              f"(reached {len(hits[t])}/{args.calibrate_seeds} within 150) {sorted(hits[t])}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--parallel", type=ints, default=[1, 4, 8, 16])
    p.add_argument("--seeds", type=ints, default=[0, 1, 2, 3, 4])
    p.add_argument("--sleep", type=float, default=1.0, help="seconds each trial sleeps before it logs")
    p.add_argument("--target", type=float, default=0.1, help="the regret to reach")
    p.add_argument("--max-trials", type=int, default=200, help="a study's trials if the target is never reached")
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--cpus", type=float, default=8, help="CPUs each local agent offers")
    p.add_argument("--trial-python", default=sys.executable)
    p.add_argument("--timeout", type=float, default=400.0, help="one study, s")
    p.add_argument("--calibrate", action="store_true", help="only print Optuna's trials-to-target, in-process")
    p.add_argument("--calibrate-seeds", type=int, default=20)
    p.add_argument("--out", default=str(HERE / "results" / "hpo_speedup.json"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.calibrate:
        return calibrate(args)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = os.getloadavg()
    stack = Stack(args.agents, args.cpus, keep=False)
    try:
        stack.up()
        runs = asyncio.run(measure(stack, args))
    finally:
        stack.down()
    rows = table(runs, args.parallel, args.sleep)
    text = render(rows, args)
    print(text, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "started_at": started, "command": " ".join(sys.argv), "table": rows, "text": text, "runs": runs,
        "config": {"target": args.target, "sleep_s": args.sleep, "max_trials": args.max_trials, "sampler": "tpe",
                   "agents": args.agents, "agent_cpus": args.cpus, "trial": TRIAL_CODE, "params": PARAMS},
        "host": {"nproc": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
    }, indent=1) + "\n")
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
