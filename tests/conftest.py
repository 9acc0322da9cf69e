"""Real parts for every test: a nats-server per test (random port, temp store), real daemon processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import dockerd
import pytest
import structlog
import xdistgroups
import yaml
from browserkit import browser, page, shots  # noqa: F401 - the browser tests' fixtures, for every module

from incl.bus.client import Client
from incl.bus.connection import Bus, connect
from incl.cli.files import upload_workdir
from incl.proto.messages import TERMINAL, Job
from incl.proto.spec import load_spec

T = TypeVar("T")


def _uncached_structlog() -> None:
    """Daemons cache their loggers on first use; in a test process that would bind each module's logger to the
    configuration of whichever test logged first (a CLI test configures it), and `capture_logs` in a later test
    would see nothing. Which tests come first depends on the pytest-xdist worker, so no test may rely on it."""
    configure = structlog.configure

    def uncached(**settings: Any) -> None:
        configure(**{**settings, "cache_logger_on_first_use": False})

    structlog.configure = uncached  # type: ignore[assignment]


_uncached_structlog()


def _bytecode_outside_the_tree() -> None:
    """Where Python may not write bytecode next to the sources (PYTHONDONTWRITEBYTECODE, set to keep the tree
    clean), every daemon, CLI call and pytest worker would compile the whole of incl again, and pytest would
    rewrite every test module's asserts again in each worker (measured in docs/testing.md). Instead they cache it
    under the tests' cache folder, outside the tree: this process from now on, and every process it starts."""
    if not sys.dont_write_bytecode:
        return
    prefix = os.environ.get("PYTHONPYCACHEPREFIX") or str(dockerd.cache_dir() / "pycache")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    sys.dont_write_bytecode, sys.pycache_prefix = False, prefix


_bytecode_outside_the_tree()


@pytest.fixture(autouse=True)
def _structlog_defaults() -> None:
    """Each test starts from structlog's defaults: a CLI test that configured the level to `warning` would
    otherwise hide the info lines a later test captures (`capture_logs` replaces the processors, not the level)."""
    structlog.reset_defaults()

NATS_SERVER = Path(sys.executable).parent / "nats-server"

# Small numbers so that tests wait on events for fractions of a second, never on sleeps.
CONTROLLER_CFG = {
    "heartbeat_interval": 0.2,
    # agents fence their jobs 2.5 s into a silence (the lease), longer than the tests' NATS restarts
    "agent_lost_after": 4.0,
    "schedule_interval": 0.2,
    "assign_resend_after": 1.0,
    "cancel_grace": 2.0,
    "events_fetch_timeout": 0.3,
    "retry_initial": 0.02,
    "retry_max": 0.3,
    "request_timeout": 2.0,
    "connect_timeout": 1.0,
    "reconnect_wait": 0.1,
    "log_level": "debug",
}
AGENT_CFG = {
    "heartbeat_interval": 0.2,
    "assign_fetch_timeout": 0.5,
    "retry_initial": 0.02,
    "retry_max": 0.3,
    "request_timeout": 2.0,
    "connect_timeout": 1.0,
    "reconnect_wait": 0.1,
    "cancel_grace": 2.0,
    "cpus": 4,
    "log_level": "debug",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(check: Callable[[], Awaitable[T | None]] | Callable[[], T | None], timeout: float = 20.0,
                   what: str = "condition", interval: float = 0.05) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - the thing may be restarting
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Daemon:
    """A real process with its output in a file; kill() is kill -9."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; closed right after Popen
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env)
        out.close()
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        stop_all([self])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(daemons: list[Daemon], timeout: float = 10.0) -> None:
    """SIGTERM to each daemon at once, then SIGKILL to any still running `timeout` seconds later: each shutdown
    overlaps the others' instead of following them."""
    running = [d for d in daemons if d.proc is not None and d.proc.poll() is None]
    for d in running:
        d.proc.terminate()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    for d in running:
        try:
            d.proc.wait(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            d.kill()


def wait_listening(daemon: Daemon, port: int, timeout: float = 10.0) -> None:
    """Until `daemon` accepts connections on `port` on loopback; if it never does, its output says why."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"{daemon.name} did not start:\n{daemon.output()}")


class NatsServer(Daemon):
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        store = tmp / "nats-store"
        super().__init__("nats", [str(NATS_SERVER), "-js", "-sd", str(store), "-a", "127.0.0.1",
                                  "-p", str(self.port)], tmp / "nats.log")

    def start(self) -> NatsServer:
        super().start()
        wait_listening(self, self.port)
        return self


class Cluster:
    """A controller and agents as real processes around one NATS server, plus a CLI client."""

    def __init__(self, tmp: Path, nats: NatsServer) -> None:
        self.tmp, self.nats = tmp, nats
        self.controller: Daemon | None = None
        self.agents: dict[str, Daemon] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def _config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start_controller(self, **overrides: Any) -> Daemon:
        cfg = self._config("controller", {**CONTROLLER_CFG, "nats_url": self.nats.url,
                                          "store_url": f"file://{self.tmp / 'store'}", **overrides})
        self.controller = Daemon("controller", [sys.executable, "-m", "incl.controller", "--config", str(cfg)],
                                 self.tmp / "controller.log", self.env).start()
        return self.controller

    def start_agent(self, agent_id: str, **overrides: Any) -> Daemon:
        cfg = self._config(agent_id, {**AGENT_CFG, "agent_id": agent_id, "nats_url": self.nats.url,
                                      "work_dir": str(self.tmp / "agents" / agent_id), **overrides})
        daemon = Daemon(agent_id, [sys.executable, "-m", "incl.agent", "--config", str(cfg)],
                        self.tmp / f"{agent_id}.log", self.env).start()
        self.agents[agent_id] = daemon
        return daemon

    def client(self) -> Client:
        return Client(self.nats.url, timeout=5.0)

    async def submit(self, run: str, user: str = "tester", **spec: Any) -> Job:
        """Submit once the controller answers (it may still be starting); a workdir is uploaded as `incl submit`
        does."""
        parsed = load_spec({"run": run, **spec})
        await self.wait_controller()
        async with self.client() as c:
            code = await upload_workdir(c, parsed.workdir) if parsed.workdir else None
            return await c.submit(parsed, user=user, code=code)

    def cli(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The real `incl` command against this cluster."""
        return subprocess.run([sys.executable, "-m", "incl.cli", "--nats", self.nats.url, *args], capture_output=True,
                              text=True, timeout=timeout, cwd=cwd,
                              env={**self.env, **(env or {})})

    async def wait_controller(self, timeout: float = 20.0) -> None:
        async def check() -> bool:
            async with self.client() as c:
                return bool(await c.ping())

        await wait_for(check, timeout, "the controller to answer")

    async def job(self, job_id: str) -> Job:
        async with self.client() as c:
            return await c.job(job_id)

    async def wait_state(self, job_id: str, states: set[str] | frozenset[Any], timeout: float = 30.0) -> Job:
        async def check() -> Job | None:
            job = await self.job(job_id)
            return job if job.state in states else None

        return await wait_for(check, timeout, f"job {job_id} to reach {sorted(states)}")

    async def wait_done(self, job_id: str, timeout: float = 30.0) -> Job:
        return await self.wait_state(job_id, TERMINAL, timeout)

    async def wait_agents(self, n: int, timeout: float = 20.0) -> None:
        async def check() -> bool:
            async with self.client() as c:
                return len([a for a in await c.agents() if a.record.state == "alive"]) >= n

        await wait_for(check, timeout, f"{n} agents alive")

    async def logs(self, job_id: str) -> list[Any]:
        async with self.client() as c:
            return [b async for b in c.log_batches(job_id, follow=False)]

    async def log_lines(self, job_id: str, attempt: int | None = None) -> list[bytes]:
        return [line.data for b in await self.logs(job_id) if attempt is None or b.attempt == attempt
                for line in b.lines if line.stream != 3]

    async def metric_points(self, job_id: str) -> list[Any]:
        async with self.client() as c:
            return [p for b in [b async for b in c.metric_batches(job_id)] for p in b.points]

    def close(self) -> None:
        """The agents together, then the controller (an agent stopping may still report to it)."""
        stop_all(list(self.agents.values()))
        if self.controller is not None:
            self.controller.stop()

    def dump(self) -> str:
        parts = []
        for d in [self.controller, *self.agents.values(), self.nats]:
            if d is not None:
                parts.append(f"===== {d.name}\n{d.output()[-6000:]}")
        return "\n".join(parts)


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Our own dockerd for the session (skips without one; with CI=true, fails instead)."""
    engine = dockerd.start_dockerd(tmp_path_factory.mktemp("dockerd"))
    yield engine
    engine.stop()


@pytest.fixture(scope="session")
def busybox_image(docker_engine: Any) -> str:
    return dockerd.busybox_image(docker_engine)


@pytest.fixture(scope="session")
def python_image(docker_engine: Any) -> str:
    """Debian minbase with python3 (debootstrapped once, in the background from the start of the run; then
    cached outside the repository)."""
    return dockerd.python_image(docker_engine, _rootfs_build.result() if _rootfs_build else None)


# Fixtures that prepare the Docker engine and its images have their own time limits (dockerd's start, the
# rootfs build, `docker import`); the per-test timeout counts only the test itself for the tests using them,
# so the first Docker test on a loaded machine does not pay for everyone's set-up.
DOCKER_FIXTURES = {"docker_engine", "busybox_image", "python_image"}
_rootfs_build: dockerd.BackgroundRootfs | None = None


def xdist_group(item: pytest.Item) -> str:
    """The worker a test runs on is its group's (tests/xdistgroups.py): every Docker test shares one (one dockerd,
    one import of the python image), any other test its file's (its module fixtures start once)."""
    return "docker" if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())) else item.nodeid.split("::")[0]


def expected_seconds(item: pytest.Item) -> float:
    """A rough guess of a test's time, only to start the longest groups first: an end-to-end test starts processes
    and waits on leases (seconds; more when marked slow), a Docker test starts containers, a unit test mostly
    waits on nothing; a test allowed more than the usual 120 s is long."""
    marker = item.get_closest_marker("timeout")
    allowed = float(marker.args[0]) if marker and marker.args else 0.0
    if "/e2e/" in f"/{item.nodeid}":
        base = 8.0 if item.get_closest_marker("slow") else 5.0
    else:
        base = 3.0 if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())) else 0.05
    return allowed / 8 if allowed > 120 else base


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[xdistgroups.GROUPS_DIR] = str(xdistgroups.groups_dir(node.config))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return xdistgroups.make_scheduler(config, log) if config.getvalue("dist") == "loadgroup" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist, the longest first; the Docker tests' per-test timeout counts the test body only."""
    if hasattr(config, "workerinput"):
        xdistgroups.order_longest_first(items, xdist_group, expected_seconds)
        xdistgroups.write_groups(config, items, xdist_group)
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if DOCKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            marker = item.get_closest_marker("timeout")
            args, kwargs = (marker.args, marker.kwargs) if marker else ((), {})
            item.add_marker(pytest.mark.timeout(*args, **{**kwargs, "func_only": True}), append=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building the python rootfs, in the background, when a selected test needs it and it is not cached:
    a one-off build of one to five minutes (measured in docs/testing.md) under its own time limit, which then
    overlaps the tests that come before the first one to need it."""
    global _rootfs_build
    if session.config.option.collectonly or dockerd.python_rootfs_path().exists():
        return
    if not dockerd.can_build_python_rootfs():
        return  # the Docker tests skip (or, with CI=true, fail) and say why
    if any("python_image" in getattr(item, "fixturenames", ()) for item in session.items):
        _rootfs_build = dockerd.BackgroundRootfs().start()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _rootfs_build is not None and _rootfs_build.seconds is not None:
        terminalreporter.write_line(f"the Docker tests' python rootfs was built in {_rootfs_build.seconds:.0f} s "
                                    f"(once; cached in {dockerd.cache_dir()})")


def pytest_unconfigure(config: pytest.Config) -> None:
    xdistgroups.remove_groups_dir(config)
    if _rootfs_build is not None:
        _rootfs_build.cancel()  # a run that ends first (-x, Ctrl-C) leaves no half build behind


@pytest.fixture
def nats_server(tmp_path: Path) -> Any:
    server = NatsServer(tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    """A raw connection to this test's NATS server (for tests of the bus layer itself)."""
    async with await connect(nats_server.url, "test", connect_timeout=2, reconnect_wait=0.1,
                             request_timeout=5) as bus:
        yield bus


@pytest.fixture
async def cluster(tmp_path: Path, nats_server: NatsServer, request: pytest.FixtureRequest,
                  monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("INCL_HOME", str(tmp_path / "home"))  # the CLI's caches, in-process and in subprocesses
    c = Cluster(tmp_path, nats_server)
    yield c
    c.close()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(c.dump())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
