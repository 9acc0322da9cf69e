"""`incl up` / `incl status` / `incl down`: the embedded stack is started once, found again, mended when a part
died, and stopped exactly."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, pid_alive, wait_for

from incl.cli.stack import port_free

PY = sys.executable
INCL = str(Path(PY).parent / "incl")  # the console script, as a user runs it


def incl(home: Path, *args: str, timeout: float = 90, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INCL_HOME": str(home)}
    env.pop("INCL_NATS_URL", None)
    return subprocess.run([PY, "-m", "incl.cli", *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd)


def parts(home: Path) -> dict[str, dict[str, object]]:
    out = incl(home, "status", "--json")
    assert out.returncode in (0, 1), out.stderr
    return {p["name"]: p for p in json.loads(out.stdout)["parts"]}


async def test_up_twice_submit_down_stops_exactly_what_it_started(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    web = free_port()
    up = incl(home, "up", "--agents", "2", "--port", str(port), "--web-port", str(web))
    try:
        assert up.returncode == 0, up.stderr
        assert f"nats://127.0.0.1:{port}" in up.stdout and "2 local agent" in up.stdout
        assert f"Web UI: http://127.0.0.1:{web}/" in up.stdout
        state = json.loads((home / "stack.json").read_text())
        pids = [p["pid"] for p in state["procs"]]
        assert [p["name"] for p in state["procs"]] == ["nats", "controller", "local-0", "local-1", "web"]
        # Slack notices link to the job pages of the web UI it started.
        assert state["procs"][1]["argv"][-2:] == ["--web-url", f"http://127.0.0.1:{web}/"]
        again = incl(home, "up", "--port", str(port))
        assert again.returncode == 0 and "already running" in again.stdout and f":{web}/" in again.stdout
        sub = incl(home, "submit", "--follow", "--", "echo", "from the embedded stack")
        assert sub.returncode == 0 and "from the embedded stack" in sub.stdout, sub.stderr
        # The web UI `incl up` started acts as the local user: it lists that job.
        assert incl(home, "web", "--url").stdout.strip() == f"http://127.0.0.1:{web}/"
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/jobs", timeout=10) as reply:
            assert [j["id"] for j in json.loads(reply.read())["jobs"]] == [
                j["id"] for j in json.loads(incl(home, "ls", "--json").stdout)]
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


async def test_up_restarts_the_parts_that_died_and_status_names_each(tmp_path: Path) -> None:
    """After kill -9 of the controller and an agent, `incl status` names them dead, `incl up` starts exactly
    those again and says so, jobs run, and `incl down` stops every part."""
    home = tmp_path / "home"
    up = incl(home, "up", "--agents", "2", "--port", str(free_port()), "--web-port", "0")
    try:
        assert up.returncode == 0, up.stderr
        before = json.loads((home / "stack.json").read_text())["procs"]
        pid = {p["name"]: p["pid"] for p in before}
        for name in ("controller", "local-1"):
            os.kill(pid[name], signal.SIGKILL)
        await wait_for(lambda: not pid_alive(pid["controller"]) and not pid_alive(pid["local-1"]), timeout=10,
                       what="the killed parts gone")

        status = incl(home, "status")
        assert status.returncode == 1 and "not running: controller, local-1" in status.stderr
        assert {n: p["alive"] for n, p in parts(home).items()} == {
            "nats": True, "controller": False, "local-0": True, "local-1": False}

        again = incl(home, "up")
        assert again.returncode == 0, again.stderr
        assert "restarted: controller (pid " in again.stdout and "local-1 (pid " in again.stdout
        assert "already running" not in again.stdout
        now = parts(home)
        assert all(p["alive"] for p in now.values()), now
        assert now["nats"]["pid"] == pid["nats"] and now["local-0"]["pid"] == pid["local-0"]
        assert now["controller"]["pid"] != pid["controller"] and now["local-1"]["pid"] != pid["local-1"]

        sub = incl(home, "submit", "--follow", "--", "echo", "after the restart")
        assert sub.returncode == 0 and "after the restart" in sub.stdout, sub.stderr
        running = [int(p["pid"]) for p in now.values()]
    finally:
        down = incl(home, "down")
    assert down.returncode == 0 and "stopped: local-1, local-0, controller, nats" in down.stdout, down.stdout
    await wait_for(lambda: not any(pid_alive(p) for p in running), timeout=10, what="every part gone")
    assert incl(home, "status").returncode == 1


def test_down_leaves_a_process_that_reuses_a_recorded_pid_alone(tmp_path: Path) -> None:
    """A part died and its pid went to some other process: `incl down` must not touch that process."""
    home = tmp_path / "home"
    home.mkdir()
    bystander = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    try:
        work = home / "agents" / "local-0"
        (home / "stack.json").write_text(json.dumps({
            "nats_url": "nats://127.0.0.1:1", "embedded_nats": True, "started_at": 0.0,
            "procs": [{"name": "local-0", "pid": bystander.pid, "log": str(home / "local-0.log"),
                       "marker": f"incl.agent --id local-0 --nats nats://127.0.0.1:1 --work-dir {work} ",
                       "argv": [PY, "-P", "-m", "incl.agent", "--id", "local-0"]}]}))
        assert parts(home)["local-0"]["alive"] is False
        down = incl(home, "down")
        assert down.returncode == 0 and "nothing was still running" in down.stdout
        assert pid_alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()


async def test_up_from_a_folder_holding_an_incl_package_runs_jobs(tmp_path: Path) -> None:
    """The folder `incl up` is run from never lands on a daemon's sys.path: a broken `incl/` there is harmless."""
    project = tmp_path / "project"
    (project / "incl").mkdir(parents=True)
    (project / "incl" / "__init__.py").write_text("raise TypeError('the wrong incl was imported')\n")
    home = tmp_path / "home"
    env = {**os.environ, "INCL_HOME": str(home)}
    env.pop("INCL_NATS_URL", None)

    def user(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([INCL, *args], capture_output=True, text=True, timeout=90, env=env, cwd=project)

    up = user("up", "--agents", "1", "--port", str(free_port()), "--web-port", "0")
    try:
        assert up.returncode == 0, up.stderr
        sub = user("submit", "--follow", "--", "python3", "-c", "print('ran fine')")
        assert sub.returncode == 0 and "ran fine" in sub.stdout, sub.stdout + sub.stderr
    finally:
        user("down")


def test_port_free_ignores_connections_in_time_wait() -> None:
    """A port whose only sockets are in TIME_WAIT (a stack just stopped) is free: nats-server can bind it."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server's (Go's) listeners
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()  # the server side closes first: its end, on `port`, goes to TIME_WAIT
        client.recv(1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError) as busy:
        plain.bind(("127.0.0.1", port))  # what the check did before: refused while TIME_WAIT lasts
    assert busy.value.errno == errno.EADDRINUSE
    assert port_free(port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_free(s.getsockname()[1])


# The Docker tests' python rootfs (tests/dockerd.py), built before the tests by conftest: a build that times
# out must leave nothing behind, and one killed outright is cleared by the next build.

@pytest.mark.parametrize("how", ["times-out", "is-cancelled"])
def test_a_rootfs_build_that_ends_early_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              how: str) -> None:
    import threading

    import dockerd

    if not dockerd.can_build_python_rootfs():
        pytest.skip("building a rootfs needs root and debootstrap")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = dockerd.cache_dir()
    cache.mkdir(parents=True)
    (cache / "rootfs-killed").mkdir()  # what a build killed outright (SIGKILL, no clean-up) left
    (cache / "rootfs-killed" / "big").write_bytes(b"x" * 4096)
    dockerd.python_rootfs_path().with_suffix(".partial").write_bytes(b"half a tar")
    with socket.socket() as mirror:  # accepts connections, never answers: debootstrap hangs on it
        mirror.bind(("127.0.0.1", 0))
        mirror.listen()
        url = f"http://127.0.0.1:{mirror.getsockname()[1]}/debian"
        cancel = threading.Event()
        if how == "is-cancelled":
            threading.Timer(2, cancel.set).start()  # as pytest_unconfigure does when the run ends first
        with pytest.raises(subprocess.TimeoutExpired if how == "times-out" else RuntimeError):
            dockerd.python_rootfs(timeout=3 if how == "times-out" else 60, mirror=url,
                                  cancelled=None if how == "times-out" else cancel)
    assert sorted(p.name for p in cache.iterdir()) == [dockerd.python_rootfs_path().with_suffix(".lock").name]
    leftover = subprocess.run(["pgrep", "-f", f"debootstrap.*{cache}"], capture_output=True, text=True)
    assert leftover.stdout == "", "a debootstrap of the timed-out build is still running"
