#!/usr/bin/env python3
"""Run INCL and its peer (Ray Jobs) side by side on the same benchmarks and print the ratios.

    .venv/bin/python bench/run_all.py                          # dispatch 200, throughput 1000, logs 1M
    .venv/bin/python bench/run_all.py --modes dispatch --skip-ray
    .venv/bin/python bench/run_all.py --repeat 3 --ray-json logs=bench/results/raw/logs_1M_r1.json
                                                    # INCL 3x (medians), reuse a saved Ray run for logs

Each side runs in its own process, one after the other (never both at once: they would share the cores):
INCL with ``bench/incl_side.py`` under this interpreter, Ray with ``bench/ray_peer.py`` under
``.bench-venv/bin/python`` (skipped, with a note, when either is missing or with ``--skip-ray``). Both print
one JSON object; this script keeps them, prints a table (INCL, Ray, ratio, target, verdict) and writes
everything to ``bench/results/run-<time>.json``. Ratios are "how many times better INCL is": Ray/INCL for
latencies, INCL/Ray for rates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RAY_PY = ROOT / ".bench-venv" / "bin" / "python"
RAY_PEER = HERE / "ray_peer.py"
INCL_SIDE = HERE / "incl_side.py"
MODES = ("dispatch", "throughput", "logs")

# (label, incl key, ray key, lower is better, target on INCL's own figure, target ratio)
ROWS = {
    "dispatch": [
        ("p50 submit->started (ms)", "p50_ms", "p50_ms", True, ("<=", 50.0), 20.0),
        ("p99 submit->started (ms)", "p99_ms", "p99_ms", True, None, None),
        ("mean submit->started (ms)", "mean_ms", "mean_ms", True, None, None),
        ("entrypoint alone, p50 (ms)", "direct_entrypoint_ms.p50", "direct_entrypoint_ms.p50", True, None, None),
    ],
    "throughput": [
        ("jobs/s (first submit->last end)", "jobs_per_s", "jobs_per_s", False, (">=", 100.0), 50.0),
        ("jobs completed", "n", "n", False, None, None),
        ("submits/s", "submit_per_s", "submit_per_s", False, None, None),
    ],
    "logs": [
        ("lines/s (first written->last received)", "lines_per_s", None, False, (">=", 100_000.0), None),
        ("lines/s (first received->last received)", "lines_per_s_recv", "lines_per_s", False, None, None),
        ("lines/s (submit->last received)", "lines_per_s_from_submit", "lines_per_s_from_submit", False,
         None, None),
        ("follower lag p50 (ms)", "lag_p50_ms", None, True, None, None),
        ("follower lag p99 (ms)", "lag_p99_ms", None, True, ("<", 300.0), None),
        ("lines received", "received", "received", False, None, None),
        ("lines lost", "lost", None, True, ("==", 0), None),
    ],
}


def log(*a: object) -> None:
    print("[run_all]", *a, file=sys.stderr, flush=True)


def dig(d: dict | None, key: str | None):
    if d is None or key is None:
        return None
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def med(runs: list[dict] | None, key: str | None):
    """The median over runs of one figure (the figure itself for one run); None if no run has it."""
    vals = sorted(v for v in (dig(x, key) for x in runs or []) if isinstance(v, (int, float))
                  and not isinstance(v, bool))
    if not vals:
        return None
    m = len(vals) // 2
    v = vals[m] if len(vals) % 2 else (vals[m - 1] + vals[m]) / 2
    return int(v) if all(isinstance(x, int) for x in vals) and float(v).is_integer() else v


def run_side(argv: list[str], timeout: float) -> dict:
    t = time.time()
    log("running:", " ".join(argv))
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g}s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        return {"error": f"no JSON result (exit {p.returncode})", "stdout_tail": p.stdout[-2000:]}
    res = json.loads(lines[-1])
    res.setdefault("exit_code", p.returncode)
    log(f"done in {time.time() - t:.0f}s")
    return res


def side_args(mode: str, args) -> list[str]:
    if mode == "logs":
        return ["--mode", mode, "--lines", str(args.lines)]
    n = args.n_dispatch if mode == "dispatch" else args.n_throughput
    return ["--mode", mode, "--n", str(n)]


def check(value, target) -> str:
    if target is None or value is None:
        return ""
    op, limit = target
    ok = {"<=": value <= limit, ">=": value >= limit, "<": value < limit, "==": value == limit}[op]
    return "PASS" if ok else "FAIL"


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def table(mode: str, incl_runs: list[dict], ray_runs: list[dict]) -> tuple[list[dict], str]:
    rows, out = [], []
    head = f"{'':42} {'INCL':>14} {'Ray Jobs':>14} {'INCL x better':>14}  target"
    out.append(f"== {mode} == (median of {len(incl_runs)} INCL run(s), {len(ray_runs)} Ray run(s))")
    out.append(head)
    incl = incl_runs[-1] if incl_runs else None
    ray = ray_runs[-1] if ray_runs else None
    for label, ik, rk, lower, target, ratio_target in ROWS[mode]:
        iv, rv = med(incl_runs, ik), med(ray_runs, rk)
        ratio = None
        if isinstance(iv, (int, float)) and isinstance(rv, (int, float)) and iv and rv \
                and label not in ("jobs completed", "lines received", "entrypoint alone, p50 (ms)"):
            ratio = rv / iv if lower else iv / rv
        verdicts = [v for v in (check(iv, target), check(ratio, (">=", ratio_target) if ratio_target else None)) if v]
        tdesc = " and ".join(x for x in (
            f"{target[0]} {fmt(target[1])}" if target else "",
            f">= {ratio_target:g}x Ray" if ratio_target else "") if x)
        verdict = ("FAIL" if "FAIL" in verdicts else "PASS") if verdicts else ""
        if ratio_target and ratio is None and verdict == "PASS":
            verdict = "PASS (own target; no Ray figure)"
        rows.append({"metric": label, "incl": iv, "ray": rv, "ratio": None if ratio is None else round(ratio, 2),
                     "target": tdesc or None, "verdict": verdict or None})
        out.append(f"{label:42} {fmt(iv):>14} {fmt(rv):>14} {(fmt(ratio) + 'x') if ratio else '-':>14}  "
                   f"{tdesc} {verdict}".rstrip())
    notes = []
    for x in incl_runs:
        if x.get("error"):
            notes.append(f"INCL error: {x['error']}")
    for x in ray_runs:
        if x.get("error"):
            notes.append(f"Ray error: {x['error']}")
    if len(incl_runs) > 1:
        k = ROWS[mode][0][1]
        notes.append(f"INCL runs, {ROWS[mode][0][0]}: {[dig(x, k) for x in incl_runs]}")
    if len(ray_runs) > 1:
        k = ROWS[mode][0][2] or ROWS[mode][1][2]
        notes.append(f"Ray runs, {k}: {[dig(x, k) for x in ray_runs]}")
    if mode == "throughput":
        for x in incl_runs:
            per_c = {y.get("submit_concurrency"): y.get("jobs_per_s") for y in x.get("runs", [])}
            notes.append(f"INCL jobs/s by submit concurrency {per_c} (best kept); all SUCCEEDED: "
                         f"{all(y.get('all_succeeded') for y in x.get('runs', [x]))}")
        if ray and ray.get("complete") is False:
            notes.append(f"Ray did not finish all {ray.get('n_requested')} jobs within its time budget: its rate is"
                         f" over the {ray.get('n')} it completed")
    if mode == "logs" and ray and ray.get("all_received") is False:
        notes.append(f"Ray follower received {ray.get('received')} of {ray.get('lines')} lines")
    if mode == "logs" and incl:
        notes.append("INCL producer: " + str(incl.get("producer_buffer")) + "; Ray's lines/s starts at its first chunk "
                     "received, which comes after its job start (see submit->last received for both)")
    if ray is None:
        notes.append("Ray side not run (skipped or not available)")
    out.extend(f"  note: {n}" for n in notes)
    return rows, "\n".join(out)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--n-dispatch", type=int, default=200)
    p.add_argument("--n-throughput", type=int, default=1000)
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--skip-ray", action="store_true", help="run the INCL side only")
    p.add_argument("--skip-incl", action="store_true", help="run the Ray side only")
    p.add_argument("--ray-budget-s", type=float, default=540.0, help="Ray side: stop measuring after this long")
    p.add_argument("--ray-concurrency", type=int, default=1, help="Ray side: throughput submit threads")
    p.add_argument("--repeat", type=int, default=1, help="INCL runs per mode; the table shows medians")
    p.add_argument("--ray-repeat", type=int, default=1, help="Ray runs per mode")
    p.add_argument("--incl-args", default="", help="extra arguments for incl_side.py (one string)")
    p.add_argument("--ray-json", action="append", default=[], metavar="MODE=FILE",
                   help="use this saved Ray result for MODE instead of running it (repeatable: median)")
    p.add_argument("--incl-json", action="append", default=[], metavar="MODE=FILE",
                   help="use this saved INCL result for MODE instead of running it (repeatable: median)")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the results JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            sys.exit(f"unknown mode {m!r}")
    saved: dict[str, dict[str, list[str]]] = {"ray": {}, "incl": {}}
    for side, items in (("ray", args.ray_json), ("incl", args.incl_json)):
        for item in items:
            mode, _, path = item.partition("=")
            saved[side].setdefault(mode, []).append(path)
    ray_ok = RAY_PY.exists() and RAY_PEER.exists()
    if not ray_ok and not args.skip_ray:
        log(f"Ray side unavailable ({RAY_PY} or {RAY_PEER} missing): INCL only")
    started = time.strftime("%Y%m%d-%H%M%S")
    report: dict = {"started_at": started, "host": {"nproc": os.cpu_count(), "loadavg_start": os.getloadavg()},
                    "results": {}}
    texts = []
    for mode in modes:
        incl: list[dict] = []
        ray: list[dict] = []
        if saved["incl"].get(mode):
            incl = [json.loads(Path(f).read_text()) for f in saved["incl"][mode]]
        elif not args.skip_incl:
            for _ in range(args.repeat):
                incl.append(run_side([sys.executable, str(INCL_SIDE), *side_args(mode, args),
                                      *args.incl_args.split()], timeout=1800))
        if saved["ray"].get(mode):
            ray = [json.loads(Path(f).read_text()) for f in saved["ray"][mode]]
        elif ray_ok and not args.skip_ray:
            extra = ["--budget-s", f"{args.ray_budget_s:g}"]
            if mode == "throughput":
                extra += ["--concurrency", str(args.ray_concurrency)]
            for _ in range(args.ray_repeat):
                ray.append(run_side([str(RAY_PY), str(RAY_PEER), *side_args(mode, args), *extra],
                                    timeout=args.ray_budget_s + 300))
        rows, text = table(mode, incl, ray)
        texts.append(text)
        print(text + "\n", flush=True)
        report["results"][mode] = {"incl": incl, "ray": ray, "table": rows}
    report["host"]["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"run-{started}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
