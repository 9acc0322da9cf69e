"""A 2-node job whose run line is torchrun trains a stock DDP script over NCCL (tests/gpu/multinode_nccl.py, on
this machine's GPUs); skipped without a GPU, torch or NCCL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from multinode_nccl import can_run

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.timeout(420)]


def test_torchrun_trains_a_stock_ddp_script_over_nccl_across_two_nodes() -> None:
    if reason := can_run():
        pytest.skip(reason)
    script = Path(__file__).with_name("multinode_nccl.py")
    done = subprocess.run([sys.executable, str(script), "--timeout", "300"], capture_output=True, text=True,
                          timeout=400)
    summary = json.loads(done.stdout)
    if done.returncode == 2:
        pytest.skip(summary["reason"])
    assert done.returncode == 0 and summary["result"] == "pass", (summary, done.stderr[-4000:])
