"""What the tests of the Compare, Study and Cluster pages share: two jobs that log metrics, a tiny HPO study,
and an agent whose (recorded) GPUs go idle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from conftest import Cluster

from incl.proto.spec import load_spec
from incl.proto.studies import Study

PY = sys.executable

# A run whose loss falls to 1/(steps*LR) and whose accuracy climbs; its last values tell the two apart.
RUN = ("import incl, os\n"
       "lr = float(os.environ['LR'])\n"
       "for s in range(50):\n"
       "    incl.log({'loss': 1.0 / (1 + s * lr), 'accuracy': s * lr / (1 + s * lr)}, step=s)\n")

# A trial: the value is a smooth function of its three parameters, reported at three steps.
TRIAL = ("import incl, math, os\n"
         "lr, layers, opt = float(os.environ['LR']), int(os.environ['LAYERS']), os.environ['OPT']\n"
         "v = (math.log10(lr) + 2.5) ** 2 + 0.1 * layers + (0.0 if opt == 'adam' else 0.5)\n"
         "for s in range(3):\n"
         "    incl.log({'loss': v + 1.0 / (s + 1)}, step=s)\n"
         "incl.log({'loss': v}, step=3)\n")

STUDY = {"name": "tiny-sweep", "run": f"{PY} -c \"{TRIAL}\"", "resources": {"cpus": 0.5},
         "hpo": {"metric": "loss", "trials": 5, "parallel": 5, "sampler": "random", "seed": 3,
                 "params": {"LR": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                            "LAYERS": {"type": "int", "low": 1, "high": 8},
                            "OPT": ["sgd", "adam"]}}}


async def submit_study(cluster: Cluster, **overrides: Any) -> Study:
    await cluster.wait_controller()
    async with cluster.client() as c:
        return await c.submit_study(load_spec({**STUDY, **overrides}), user="tester")


def idle_gpus(tmp: Path) -> Path:
    """One recorded GPU: busy for 1 s (20 samples at 0.05 s), then idle (for 200 s)."""
    info = [{"index": 0, "uuid": "GPU-0", "model": "Fake A100", "memory_total": 80 * 2**30}]
    tick = lambda u: {"0": {"util_gpu": u, "util_mem": u / 2, "memory_used": 2**30}}  # noqa: E731
    path = tmp / "nvml.yaml"
    path.write_text(yaml.safe_dump({"gpus": info, "readings": [tick(95)] * 20 + [tick(0)] * 4000}))
    return path


def start_gpu_agent(cluster: Cluster, tmp: Path) -> None:
    cluster.start_agent("gpu1", cpus=4, gpu_sample_interval=0.05, gpu_recording=str(idle_gpus(tmp)))


IDLE = {"threshold": 10, "window": "1s", "grace": "0s", "action": "notify"}
