#!/usr/bin/env python3
"""Peer of bench/hpo_overhead.py: Ray Tune with OptunaSearch running trivial trials.

    .bench-venv/bin/python bench/ray_tune_peer.py --mode default --trials 200 --parallel 8
    .bench-venv/bin/python bench/ray_tune_peer.py --mode reuse   --trials 200 --parallel 8

Prints exactly ONE JSON object on stdout; Ray's chatter goes to stderr.

A local Ray instance (`ray.init(num_cpus=PARALLEL)`, no dashboard: less for Ray to carry on 2 cores), then
`Tuner(trainable, TuneConfig(search_alg=OptunaSearch(metric="loss", mode="min"), num_samples=TRIALS,
max_concurrent_trials=PARALLEL, reuse_actors=...))` over `{"x": tune.uniform(0, 1)}`, the trainable a function
that reports `{"loss": x}` once. OptunaSearch's sampler is Optuna's default (TPE), as INCL's `tpe`.
`--mode default` keeps Tune's default (reuse_actors=False: a new actor, so a new worker process, per trial);
`--mode reuse` sets reuse_actors=True (the actors, and their processes, serve trial after trial).
trials/s = trials / the wall time of `tuner.fit()`; `ray.init()` and `ray.shutdown()` are timed apart and
not counted. Tune's results go to a temporary folder, removed afterwards.

Like bench/ray_peer.py, everything runs inside a private network + PID namespace (only `lo`), so Ray's
listeners reach nothing outside and, this being PID 1 of the namespace, nothing of Ray outlives the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NS_ENV = "INCL_RAY_TUNE_PEER_IN_NS"


def log(*a: object) -> None:
    print("[ray_tune_peer]", *a, file=sys.stderr, flush=True)


def in_namespace(argv: list[str]) -> int:
    """Run this script again as PID 1 of a private net+pid namespace; its exit status."""
    unshare = shutil.which("unshare")
    if not unshare or not shutil.which("ip"):
        log("unshare (util-linux) and ip (iproute2) are needed to run Ray in a private namespace")
        return 2
    cmd = [unshare, "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        cmd += ["--user", "--map-root-user"]
    # Ray starts its workers at nice 15 by default; on this shared machine that would hand Ray's trials' CPU to
    # other users' processes, while INCL's trials run at nice 0. Run Ray's at 0 too (RAY_worker_niceness).
    env = {"RAY_worker_niceness": "0", **os.environ, NS_ENV: "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([*cmd, sys.executable, str(Path(__file__).resolve()), *argv], env=env).returncode


def trainable(config: dict) -> None:
    from ray import tune

    tune.report({"loss": config["x"], "t_start": time.time()})


def bench(args: argparse.Namespace) -> dict:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    storage = tempfile.mkdtemp(prefix="rtune", dir="/tmp")
    res: dict = {"peer": "ray-tune", "mode": args.mode, "trials": args.trials, "parallel": args.parallel,
                 "ray_version": ray.__version__, "worker_niceness": os.environ.get("RAY_worker_niceness"),  # noqa: SIM112 - Ray's name
                 "loadavg_start": os.getloadavg()}
    try:
        t = time.time()
        ray.init(num_cpus=args.parallel, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        res["ray_init_s"] = round(time.time() - t, 3)
        tuner = tune.Tuner(
            trainable,
            param_space={"x": tune.uniform(0.0, 1.0)},
            tune_config=tune.TuneConfig(search_alg=OptunaSearch(metric="loss", mode="min"), num_samples=args.trials,
                                        max_concurrent_trials=args.parallel, reuse_actors=args.mode == "reuse"),
            run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
        )
        t0 = time.time()
        grid = tuner.fit()
        fit = time.time() - t0
        starts = sorted(r.metrics["t_start"] for r in grid if r.metrics and "t_start" in r.metrics)
        errors = sum(1 for r in grid if r.error is not None)
        res.update({
            "fit_s": round(fit, 3), "trials_per_s": round(len(grid) / fit, 3), "terminated": len(grid) - errors,
            "errors": errors, "best_loss": grid.get_best_result(metric="loss", mode="min").metrics["loss"],
            "fit_to_first_trial_ms": round((starts[0] - t0) * 1000, 1) if starts else None,
        })
        t = time.time()
        ray.shutdown()
        res["ray_shutdown_s"] = round(time.time() - t, 3)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    res.update({"loadavg_end": os.getloadavg(), "python": platform.python_version(),
                "namespace": "unshare --net --pid --fork --mount-proc (lo only)"})
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["default", "reuse"], required=True)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--parallel", type=int, default=8)
    args = p.parse_args(argv)
    if os.environ.get(NS_ENV) != "1":
        return in_namespace(argv)
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # fd 1 only for the result
    try:
        res = bench(args)
    except Exception as exc:  # noqa: BLE001 - reported in the result, as the other peers do
        import traceback

        traceback.print_exc()
        res = {"peer": "ray-tune", "mode": args.mode, "error": f"{type(exc).__name__}: {exc}"}
    os.write(real_stdout, (json.dumps(res) + "\n").encode())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if "error" not in res else 1)  # PID 1 of the namespace: its exit ends whatever Ray left


if __name__ == "__main__":
    sys.exit(main())
