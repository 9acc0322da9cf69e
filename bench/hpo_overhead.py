#!/usr/bin/env python3
"""HPO overhead: trials/s of a 200-trial study of trivial trials, 8 in flight, a process per trial, against
Ray Tune with OptunaSearch (bench/ray_tune_peer.py), side by side in one run on one machine.

    .venv/bin/python bench/hpo_overhead.py                     # INCL x3 (tpe, random), Ray x3 (default, reuse)
    .venv/bin/python bench/hpo_overhead.py --repeat 1 --skip-ray
    .venv/bin/python bench/hpo_overhead.py --ray-json bench/results/hpo_overhead.json   # reuse saved Ray runs

INCL: one embedded stack per repeat (incl_side.Stack: `incl up --agents 2 --cpus 4`, so 8 trials of
`resources: {cpus: 1}` fit at once), warmed with 3 `true` jobs and an 8-trial study, then one study per sampler
(tpe, Optuna's default, and random, which samples for free: the difference is the sampler's cost), their order
alternating between repeats. A trial is `PY -c "import incl, os; incl.log({'loss': float(os.environ['X'])})"`
with PY this interpreter. trials/s = trials / (study record's ended_at - the moment before submit_study).
Per-trial figures come from the trial jobs' records: submitted -> process started, process started -> ended,
and the refill (the k-th trial job ending -> the (k+parallel)-th submitted: how fast the study replaces it).

Ray: `.bench-venv/bin/python bench/ray_tune_peer.py` (see its docstring), once per mode and repeat, each in
its own Ray instance; its trials/s is over `tuner.fit()` only, Ray's start-up reported apart.

Prints the table (medians; ratios INCL/Ray; the targets) and writes bench/results/hpo_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from incl_side import CpuMeter, Stack, start_profilers, stop_profilers, wait_terminal  # noqa: E402
from stats import median, summary  # noqa: E402

from incl.bus.client import Client, current_user  # noqa: E402
from incl.proto.spec import load_spec  # noqa: E402
from incl.proto.studies import STUDY_ENDED, StudyState  # noqa: E402

USER = current_user()  # the stack has auth: a client speaks as the identity its credentials name
RAY_PY = ROOT / ".bench-venv" / "bin" / "python"
RAY_PEER = HERE / "ray_tune_peer.py"
TARGET_RATE = 20.0
TARGET_RATIO = 2.8
TRIAL_CODE = "import incl, os; incl.log({'loss': float(os.environ['X'])})"


def log(*a: object) -> None:
    print("[hpo_overhead]", *a, file=sys.stderr, flush=True)


def study_spec(run: str, trials: int, parallel: int, sampler: str, seed: int | None,
               params: dict[str, Any]) -> dict[str, Any]:
    hpo: dict[str, Any] = {"metric": "loss", "trials": trials, "parallel": parallel, "sampler": sampler,
                           "params": params}
    if seed is not None:
        hpo["seed"] = seed
    return {"run": run, "resources": {"cpus": 1}, "hpo": hpo}


async def wait_study(client: Client, study_id: str, poll: float, timeout: float) -> tuple[Any, float]:
    """The study's record once it has ended, and when this poller saw it end. Polls the cheap summary list
    (`Client.study` would compute importances in the study's own worker thread while it runs)."""
    deadline = time.time() + timeout
    while True:
        for s in await client.studies(user=USER):
            if s.study.id == study_id and s.study.state in STUDY_ENDED:
                return s, time.time()
        if time.time() > deadline:
            raise TimeoutError(f"study {study_id} did not end within {timeout:g}s")
        await asyncio.sleep(poll)


def per_trial(jobs: list[Any], parallel: int) -> dict[str, Any]:
    """Latency figures (ms) from the trial jobs' records."""
    sub_start, run, ends, subs = [], [], [], []
    for j in jobs:
        subs.append(j.submitted_at)
        att = j.current
        if att is None or att.started_at is None:
            continue
        sub_start.append((att.started_at - j.submitted_at) * 1000)
        if att.ended_at is not None:
            run.append((att.ended_at - att.started_at) * 1000)
            ends.append(att.ended_at)
    ends.sort()
    subs.sort()
    refill = [(s - e) * 1000 for e, s in zip(ends, subs[parallel:], strict=False)]
    return {"submitted_to_started_ms": summary(sub_start), "started_to_ended_ms": summary(run),
            "refill_ms": summary(refill)}


async def run_study(client: Client, spec: dict[str, Any], timeout: float, poll: float = 0.1) -> dict[str, Any]:
    """Submit one study, wait for it to end; its wall time from the record, its trial jobs' figures."""
    parsed = load_spec(spec)
    hpo = spec["hpo"]
    t0 = time.time()
    study = await client.submit_study(parsed, user=USER)
    t_ack = time.time()
    summ, t_seen = await wait_study(client, study.id, poll, timeout)
    rec = summ.study
    jobs = [j for j in await client.jobs(study=study.id) if j.trial is not None]
    states: dict[str, int] = {}
    for j in jobs:
        states[str(j.state)] = states.get(str(j.state), 0) + 1
    ended = rec.ended_at or t_seen
    wall = ended - t0
    subs = sorted(j.submitted_at for j in jobs)
    last_end = max((j.current.ended_at for j in jobs if j.current and j.current.ended_at), default=ended)
    return {
        "study_id": study.id, "sampler": hpo["sampler"], "trials": hpo["trials"], "parallel": hpo["parallel"],
        "state": str(rec.state), "completed": rec.state is StudyState.COMPLETED, "counts": summ.counts,
        "job_states": states, "best_value": summ.best_value,
        "trials_per_s": round(len(jobs) / wall, 3) if wall > 0 else None,
        "wall_s": round(wall, 3), "wall_seen_s": round(t_seen - t0, 3),
        "submit_call_ms": round((t_ack - t0) * 1000, 1),
        "submit_to_first_trial_ms": round((subs[0] - t0) * 1000, 1) if subs else None,
        "last_trial_end_to_study_end_ms": round((ended - last_end) * 1000, 1),
        **per_trial(jobs, hpo["parallel"]),
    }


async def incl_repeat(stack: Stack, args: argparse.Namespace, order: list[str]) -> dict[str, dict[str, Any]]:
    run = " ".join([shlex.quote(args.trial_python), *map(shlex.quote, args.trial_flags.split()), "-c",
                    shlex.quote(TRIAL_CODE)])
    params = {"X": {"type": "float", "low": 0.0, "high": 1.0}}
    out: dict[str, dict[str, Any]] = {}
    meter = CpuMeter(stack)
    async with Client(stack.url, timeout=30.0) as client:
        for _ in range(3):
            j = await client.submit(load_spec({"run": "true"}), "warmup")
            await wait_terminal(client, j.id, 0.01)
        await run_study(client, study_spec(run, 8, 8, "tpe", None, params), timeout=120)  # warm the study path
        for sampler in order:
            meter.start()
            res = await run_study(client, study_spec(run, args.trials, args.parallel, sampler, None, params),
                                  timeout=args.timeout)
            res["cpu_s"] = meter.stop()
            log(f"incl {sampler}: {res['trials_per_s']} trials/s, wall {res['wall_s']}s, {res['counts']}")
            out[sampler] = res
    return out


def incl_side(args: argparse.Namespace) -> list[dict[str, dict[str, Any]]]:
    runs = []
    for i in range(args.repeat):
        order = list(args.samplers) if i % 2 == 0 else list(reversed(args.samplers))
        stack = Stack(args.agents, args.cpus, keep=False)
        try:
            stack.up()
            prof = argparse.Namespace(profile=args.profile, mode=f"hpo-r{i}", concurrency=args.parallel,
                                      py_spy=args.py_spy)
            profilers = start_profilers(prof, stack)  # py-spy on the controller and local-0, with --profile
            try:
                res = asyncio.run(incl_repeat(stack, args, order))
            finally:
                stop_profilers(profilers)
            res["_stack"] = {"incl_up_s": stack.up_s, "order": order}
        finally:
            stack.down()
        runs.append(res)
    return runs


def ray_side(args: argparse.Namespace) -> list[dict[str, Any]]:
    if not (RAY_PY.exists() and RAY_PEER.exists()):
        log(f"Ray side unavailable ({RAY_PY} missing: bash bench/setup_peers.sh)")
        return []
    runs = []
    for _ in range(args.ray_repeat):
        for mode in ("default", "reuse"):
            argv = [str(RAY_PY), str(RAY_PEER), "--mode", mode, "--trials", str(args.trials),
                    "--parallel", str(args.parallel)]
            log("running:", " ".join(argv))
            try:
                p = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=args.timeout + 300, cwd=ROOT)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                res = json.loads(lines[-1]) if lines else {"error": f"no JSON (exit {p.returncode})"}
            except subprocess.TimeoutExpired:
                res = {"error": "timed out"}
            res["mode"] = mode
            log(f"ray {mode}: {res.get('trials_per_s')} trials/s {res.get('error', '')}")
            runs.append(res)
    return runs


def med(values: list[Any]) -> float | None:
    xs = [v for v in values if isinstance(v, (int, float))]
    return round(median(xs), 3) if xs else None


def build_table(incl: list[dict[str, Any]], ray: list[dict[str, Any]], samplers: list[str]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for s in samplers:
        rs = [r[s] for r in incl if s in r]
        rows[f"INCL {s}"] = {
            "trials_per_s": med([r["trials_per_s"] for r in rs]), "runs": [r["trials_per_s"] for r in rs],
            "submitted_to_started_p50_ms": med([r["submitted_to_started_ms"].get("p50") for r in rs]),
            "started_to_ended_p50_ms": med([r["started_to_ended_ms"].get("p50") for r in rs]),
            "refill_p50_ms": med([r["refill_ms"].get("p50") for r in rs]),
            "controller_cpu_ms_per_trial": med([1000 * (r["cpu_s"]["controller"] or 0) / r["trials"] for r in rs]),
            "all_completed": all(r["completed"] and r["counts"].get("COMPLETE") == r["trials"] for r in rs),
        }
    for mode, label in (("default", "Ray default"), ("reuse", "Ray reuse_actors")):
        rs = [r for r in ray if r.get("mode") == mode and not r.get("error")]
        rows[label] = {"trials_per_s": med([r["trials_per_s"] for r in rs]), "runs": [r["trials_per_s"] for r in rs],
                       "started_to_ended_p50_ms": med([r.get("trial_ms", {}).get("p50") for r in rs]),
                       "ray_init_s": med([r.get("ray_init_s") for r in rs]),
                       "all_completed": all(r.get("terminated") == r.get("trials") for r in rs) if rs else None}
    best_ray = max((rows[k]["trials_per_s"] or 0 for k in ("Ray default", "Ray reuse_actors")), default=0) or None
    tpe = rows[f"INCL {samplers[0]}"]["trials_per_s"] if samplers else None
    verdict = {}
    for s in samplers:
        v = rows[f"INCL {s}"]["trials_per_s"]
        rows[f"INCL {s}"]["x_ray_default"] = round(v / rows["Ray default"]["trials_per_s"], 2) \
            if v and rows["Ray default"]["trials_per_s"] else None
        rows[f"INCL {s}"]["x_ray_best"] = round(v / best_ray, 2) if v and best_ray else None
    if tpe is not None:
        x = tpe / best_ray if best_ray else None
        verdict = {"rate": "PASS" if tpe >= TARGET_RATE else "FAIL",
                   "ratio": None if x is None else ("PASS" if x >= TARGET_RATIO else "FAIL"),
                   "sampler": samplers[0]}
    return {"rows": rows, "best_ray": best_ray, "verdict": verdict,
            "targets": {"trials_per_s": TARGET_RATE, "x_ray_best": TARGET_RATIO}}


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return (f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}") + unit
    return f"{v}{unit}"


def render(table: dict[str, Any], n_incl: int, n_ray: int) -> str:
    rows = table["rows"]
    out = [f"== HPO overhead: trivial trials, medians of {n_incl} INCL / {n_ray} Ray run(s) per row ==",
           f"{'':18} {'trials/s':>9} {'x Ray dflt':>10} {'x Ray best':>10} {'sub->start':>11} "
           f"{'start->end':>11} {'refill':>8} {'ctl CPU/trial':>13}  runs"]
    for k, r in rows.items():
        out.append(f"{k:18} {fmt(r['trials_per_s']):>9} {fmt(r.get('x_ray_default'), 'x'):>10} "
                   f"{fmt(r.get('x_ray_best'), 'x'):>10} {fmt(r.get('submitted_to_started_p50_ms'), ' ms'):>11} "
                   f"{fmt(r.get('started_to_ended_p50_ms'), ' ms'):>11} {fmt(r.get('refill_p50_ms'), ' ms'):>8} "
                   f"{fmt(r.get('controller_cpu_ms_per_trial'), ' ms'):>13}  {r['runs']}")
    t, v = table["targets"], table["verdict"]
    if v:
        out.append(f"target: >= {t['trials_per_s']:g} trials/s ({v['rate']}) and >= {t['x_ray_best']:g}x Ray's best "
                   f"({v['ratio'] or 'no Ray figure'}), INCL {v['sampler']}")
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3, help="INCL runs (a fresh stack each); medians reported")
    p.add_argument("--ray-repeat", type=int, help="Ray runs per mode (default: --repeat)")
    p.add_argument("--samplers", type=lambda s: s.split(","), default=["tpe", "random"])
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--cpus", type=float, default=4, help="CPUs each local agent offers")
    p.add_argument("--trial-python", default=sys.executable, help="the trial's interpreter")
    p.add_argument("--trial-flags", default="", help="its options, e.g. -S (no site: a cheaper start)")
    p.add_argument("--timeout", type=float, default=600.0, help="one study or one Ray fit, s")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-incl", action="store_true")
    p.add_argument("--ray-json", help="reuse the Ray runs of this earlier result file")
    p.add_argument("--incl-json", help="reuse the INCL runs of this earlier result file")
    p.add_argument("--profile", metavar="DIR", help="py-spy the controller and agent local-0 into DIR (raw stacks)")
    p.add_argument("--py-spy", default=str(RAY_PY.parent / "py-spy"), help="py-spy (ray[default] installs one)")
    p.add_argument("--out", default=str(HERE / "results" / "hpo_overhead.json"))
    args = p.parse_args(argv)
    args.ray_repeat = args.repeat if args.ray_repeat is None else args.ray_repeat
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = os.getloadavg()
    incl: list[dict[str, Any]] = []
    ray: list[dict[str, Any]] = []
    if args.incl_json:
        incl = json.loads(Path(args.incl_json).read_text())["incl"]
    elif not args.skip_incl:
        incl = incl_side(args)
    if args.ray_json:
        ray = json.loads(Path(args.ray_json).read_text())["ray"]
    elif not args.skip_ray:
        ray = ray_side(args)
    table = build_table(incl, ray, args.samplers)
    text = render(table, len(incl), len([r for r in ray if r.get("mode") == "default" and not r.get("error")]))
    print(text, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"started_at": started, "command": " ".join(sys.argv), "table": table, "text": text,
              "config": {"trials": args.trials, "parallel": args.parallel, "agents": args.agents,
                         "agent_cpus": args.cpus, "trial_cpus": 1, "trial_python": args.trial_python,
                         "trial_flags": args.trial_flags,
                         "trial": TRIAL_CODE},
              "host": {"nproc": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
              "incl": incl, "ray": ray}
    out.write_text(json.dumps(report, indent=1) + "\n")
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
