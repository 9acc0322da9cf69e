#!/usr/bin/env python3
"""The peers of bench/web_ui.py, run in their own venv (bench/setup_web_peers.sh): write one metric of N
points as a user of each would, serve it with the peer's own UI, and print one JSON line once the server
answers with all of it. Runs until killed (its process group: the UI server is its child).

    .peers/bin/python bench/web_ui_peers.py tensorboard|mlflow DIR N PORT 'EXPR of i'

* tensorboard: `tensorboard.summary.Writer` (TensorBoard's own, no TensorFlow or PyTorch), one `add_scalar`
  per point, to DIR/tb; `tensorboard --logdir DIR/tb --port PORT` (its defaults: the Rust data server where
  it ships, 1,000 samples of a scalar kept); ready when its scalars API returns the last step.
* mlflow: `MlflowClient.log_batch` of 1,000 `Metric`s a call (the most one call takes) into a run in a sqlite
  store, DIR/mlflow.db; `mlflow ui --backend-store-uri sqlite:///... --port PORT`; ready when the run's
  metric answers over HTTP with the last step.
"""

from __future__ import annotations

import json
import math  # noqa: F401  (the series expression uses it)
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def get(url: str, data: Any = None) -> Any:
    req = urllib.request.Request(url, data=None if data is None else json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def wait(check: Any, timeout: float = 600.0) -> float:
    t = time.time()
    while time.time() - t < timeout:
        try:
            if check():
                return time.time() - t
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the peer never served all the points")


def tensorboard(work: Path, n: int, port: int, value: Any) -> tuple[dict, subprocess.Popen]:
    from tensorboard.summary import Writer

    t = time.time()
    w = Writer(str(work / "tb"))
    for i in range(n):
        w.add_scalar("loss", value(i), step=i)
    w.close()
    write_s = time.time() - t
    proc = subprocess.Popen([str(BIN / "tensorboard"), "--logdir", str(work / "tb"), "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    ready_s = wait(lambda: get(f"{base}/data/plugin/scalars/scalars?run=.&tag=loss")[-1][1] == n - 1)
    kept = len(get(f"{base}/data/plugin/scalars/scalars?run=.&tag=loss"))
    return {"url": f"{base}/#timeseries", "data": "/data/plugin/timeseries/timeSeries",
            "selector": "card-view", "write_s": round(write_s, 1), "ready_s": round(ready_s, 1),
            "points_kept": kept}, proc


def mlflow(work: Path, n: int, port: int, value: Any) -> tuple[dict, subprocess.Popen]:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    t = time.time()
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("webbench", artifact_location=str(work / "artifacts"))
    run = client.create_run(exp, run_name="metric-1m").info.run_id
    now = int(time.time() * 1000)
    for start in range(0, n, 1000):
        client.log_batch(run, metrics=[Metric("loss", value(i), now + i, i) for i in range(start, min(n, start + 1000))])
    client.set_terminated(run)
    write_s = time.time() - t
    proc = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--port", str(port),
                             "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    ready_s = wait(lambda: get(f"{base}/api/2.0/mlflow/runs/get?run_id={run}")["run"]["data"]["metrics"][0]["step"]
                   == n - 1)
    return {"url": f"{base}/#/experiments/{exp}/runs/{run}/model-metrics", "data": "get-history-bulk-interval",
            "selector": "[data-testid='experiment-view-compare-runs-card']", "write_s": round(write_s, 1),
            "ready_s": round(ready_s, 1), "run": run, "experiment": exp}, proc


def main() -> None:
    peer, work, n, port, expr = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    work.mkdir(parents=True, exist_ok=True)
    value = eval(f"lambda i: {expr}")  # the benchmark's own expression, the same for every side
    ready, proc = {"tensorboard": tensorboard, "mlflow": mlflow}[peer](work, n, port, value)
    print(json.dumps(ready), flush=True)
    proc.wait()  # the benchmark ends this process group (the UI server and what it started) when done


if __name__ == "__main__":
    main()
