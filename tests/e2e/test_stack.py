"""`incl up` / `incl down`: the embedded stack is started once, found again, and stopped exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import free_port, pid_alive, wait_for

PY = sys.executable


def incl(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INCL_HOME": str(home)}
    env.pop("INCL_NATS_URL", None)
    return subprocess.run([PY, "-m", "incl.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


async def test_up_twice_submit_down_stops_exactly_what_it_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    up = incl(home, "up", "--agents", "2", "--port", str(port))
    try:
        assert up.returncode == 0, up.stderr
        assert f"nats://127.0.0.1:{port}" in up.stdout and "2 local agent" in up.stdout
        state = json.loads((home / "stack.json").read_text())
        pids = [p["pid"] for p in state["procs"]]
        assert [p["name"] for p in state["procs"]] == ["nats", "controller", "local-0", "local-1"]
        again = incl(home, "up", "--port", str(port))
        assert again.returncode == 0 and "already running" in again.stdout
        sub = incl(home, "submit", "--follow", "--", "echo", "from the embedded stack")
        assert sub.returncode == 0 and "from the embedded stack" in sub.stdout, sub.stderr
        agents = json.loads(incl(home, "agents", "--json").stdout)
        assert sorted(a["record"]["info"]["agent_id"] for a in agents) == ["local-0", "local-1"]
        bystander = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])  # not ours: must survive
    finally:
        down = incl(home, "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    await wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10, what="every started process gone")
    assert pid_alive(bystander.pid)
    bystander.kill()
    bystander.wait()
    assert not (home / "stack.json").exists()
    again = incl(home, "down")
    assert again.returncode == 1 and "not running" in again.stderr


async def test_up_refuses_a_busy_port_clearly(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = incl(tmp_path / "home", "up", "--port", str(s.getsockname()[1]))
    assert out.returncode == 1 and "in use" in out.stderr
