"""The `docker` runtime against a real dockerd: output, exits, stopping, failures, re-adoption, networking.

One engine for the whole session (see tests/dockerd.py); each test makes its own containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import dockerd
import msgspec
import pytest
from dockerd import Dockerd, Registry

from incl.agent.docker import ContainerFailure, ContainerHandle, ContainerSpec, DockerRuntime, DockerSettings, Mount
from incl.agent.docker_logs import LogCursor
from incl.proto.messages import Stream

SETTINGS = dict(request_timeout=10.0, log_retry_interval=0.1, log_drain_timeout=5.0, stop_slack=5.0,
                progress_interval=0.0)
OUT, ERR = Stream.STDOUT, Stream.STDERR


pytestmark = pytest.mark.docker


# The session's engine and images, under the names conftest gives them (these stand in until it does).
@pytest.fixture
async def runtime(docker_engine: Dockerd) -> AsyncIterator[DockerRuntime]:
    async with DockerRuntime(DockerSettings(url=docker_engine.url, **SETTINGS)) as docker:
        yield docker


class Output:
    """A sink that keeps each stream's bytes and lets a test await what it expects to see."""

    def __init__(self) -> None:
        self.data = {OUT: bytearray(), ERR: bytearray()}
        self._grew = asyncio.Event()

    async def sink(self, stream: Stream, chunk: bytes) -> None:
        assert type(chunk) is bytes
        self.data[stream] += chunk
        self._grew.set()

    async def until(self, stream: Stream, needle: bytes, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.data[stream]:
                self._grew.clear()
                await self._grew.wait()


def spec(image: str, script: str, **fields: object) -> ContainerSpec:
    return ContainerSpec(name=f"incl-test-{uuid.uuid4().hex[:10]}", image=image, argv=["/bin/sh", "-c", script],
                         **fields)  # type: ignore[arg-type]


async def run(runtime: DockerRuntime, container: ContainerSpec) -> tuple[Output, ContainerHandle]:
    out = Output()
    return out, await runtime.start(container, out.sink)


async def test_output_arrives_as_exact_bytes_with_streams_apart(runtime: DockerRuntime, busybox_image: str) -> None:
    """Binary bytes, a 100 KB line, a line of exactly Docker's 16 KiB buffer and 10,000 lines come through
    complete, in order, stdout and stderr apart."""
    script = r"""
        printf 'bin:\000\001\377\376\200end\n'
        head -c 100000 /dev/zero | tr '\0' x; echo
        seq 1 10000
        printf 'err:\377\n' >&2
        head -c 16384 /dev/zero | tr '\0' y >&2; echo >&2
        seq 1 2000 | sed 's/^/e/' >&2
        printf 'no newline at the end'
    """
    out, handle = await run(runtime, spec(busybox_image, script))
    end = await handle.wait()
    await handle.remove()
    assert end.exit_code == 0 and end.reason is None and not end.oom_killed
    assert bytes(out.data[OUT]) == (b"bin:\x00\x01\xff\xfe\x80end\n" + b"x" * 100_000 + b"\n"
                                    + b"".join(b"%d\n" % i for i in range(1, 10_001)) + b"no newline at the end")
    assert bytes(out.data[ERR]) == (b"err:\xff\n" + b"y" * 16384 + b"\n"
                                    + b"".join(b"e%d\n" % i for i in range(1, 2001)))


async def test_exit_codes_are_the_jobs(runtime: DockerRuntime, busybox_image: str) -> None:
    """A job's exit code comes back as is; one killed by SIGKILL ends with 137, as Docker reports it."""
    for script, code in (("true", 0), ("exit 3", 3), ("kill -KILL $$", 137)):
        _, handle = await run(runtime, spec(busybox_image, script))
        assert (await handle.wait()).exit_code == code, script
        await handle.remove()


def job_files(tmp_path: Path, **scripts: str) -> list[Mount]:
    for name, text in scripts.items():
        (tmp_path / f"{name}.sh").write_text(text)
    return [Mount(source=str(tmp_path), target="/job", read_only=True)]


async def test_stop_reaches_the_shells_children(runtime: DockerRuntime, busybox_image: str, tmp_path: Path) -> None:
    """stop(grace) sends SIGTERM to the job's whole process group: a child of the shell runs its trap."""
    mounts = job_files(tmp_path, main="""
        trap 'echo "shell got TERM"' TERM
        sh /job/child.sh &
        child=$!
        wait $child
        wait $child
        echo "child exited $?"
    """, child="""
        trap 'echo "child got TERM"; exit 7' TERM
        echo ready
        while true; do sleep 0.05; done
    """)
    out, handle = await run(runtime, spec(busybox_image, "sh /job/main.sh", mounts=mounts))
    await out.until(OUT, b"ready\n")
    began = time.monotonic()
    await handle.stop(grace=30)
    end = await handle.wait()
    await handle.remove()
    assert time.monotonic() - began < 10  # the job ended on SIGTERM, long before the grace was up
    assert b"child got TERM\n" in out.data[OUT] and b"shell got TERM\n" in out.data[OUT]
    assert out.data[OUT].endswith(b"child exited 7\n") and end.exit_code == 0


async def test_stop_kills_after_the_grace(runtime: DockerRuntime, busybox_image: str) -> None:
    """A job that shrugs off SIGTERM is SIGKILLed once the grace period is over."""
    out, handle = await run(runtime, spec(busybox_image, "trap 'echo ignored TERM' TERM; echo ready; "
                                                   "while true; do sleep 0.05; done"))
    await out.until(OUT, b"ready\n")
    began = time.monotonic()
    await handle.stop(grace=0.5)
    end = await handle.wait()
    took = time.monotonic() - began
    await handle.remove()
    assert b"ignored TERM\n" in out.data[OUT]
    assert end.exit_code == 137 and 0.5 <= took < 8


async def test_out_of_memory_is_named(runtime: DockerRuntime, busybox_image: str) -> None:
    """A job over its memory limit is OOM-killed (no swap to hide in) and the reason says so."""
    _, handle = await run(runtime, spec(busybox_image, "tail /dev/zero", memory=64 * 2**20))
    end = await handle.wait()
    await handle.remove()
    assert end.oom_killed
    assert end.reason == "out of memory: the container exceeded its memory limit of 64 MiB (exit 137)"


async def test_a_missing_command_is_named(runtime: DockerRuntime, busybox_image: str) -> None:
    """A command that is not in the image gives exit 127 and a reason naming the image and the command."""
    handle = await runtime.start(ContainerSpec(name=f"incl-test-{uuid.uuid4().hex[:10]}", image=busybox_image,
                                               argv=["/no/such/program", "--flag"]), Output().sink)
    end = await handle.wait()
    await handle.remove()
    assert end.exit_code == 127
    assert end.reason == (f"command not found in image {busybox_image}: "
                          "exec /no/such/program failed: No such file or directory")


async def test_an_image_no_registry_has_fails_clearly(runtime: DockerRuntime, busybox_image: str) -> None:
    """A pull that cannot happen raises a reason naming the image and what Docker said; a present image is
    not pulled under the `missing` policy."""
    lines: list[str] = []

    async def progress(line: str) -> None:
        lines.append(line)

    await runtime.ensure_image(busybox_image, None, progress)
    assert lines == []
    image = "127.0.0.1:1/incl-test/nosuch:1"  # a registry address where nothing listens
    with pytest.raises(ContainerFailure) as failure:
        await runtime.ensure_image(image, None, progress)
    assert failure.value.reason.startswith(f"image {image} could not be pulled: ")
    assert "connection refused" in failure.value.reason
    assert lines == [f"pulling {image}"]


async def test_a_private_image_is_pulled_with_credentials(runtime: DockerRuntime, docker_engine: Dockerd,
                                                           busybox_image: str) -> None:
    """An image behind registry auth is pulled with the job's username and password, with progress lines a
    person reads; without them the pull fails and says what the registry said."""
    rootfs = dockerd.busybox_rootfs(padding=4 * 2**20)  # incompressible: a download long enough to report on
    async with Registry(rootfs, username="alice", password="s3cret") as registry:
        lines: list[str] = []

        async def progress(line: str) -> None:
            lines.append(line)

        with pytest.raises(ContainerFailure) as failure:
            await runtime.ensure_image(registry.image, None, progress)
        assert failure.value.reason.startswith(f"image {registry.image} could not be pulled: ")
        assert "no basic auth credentials" in failure.value.reason
        refused = registry.refused
        lines.clear()
        await runtime.ensure_image(registry.image, {"username": "alice", "password": "s3cret"}, progress)
        assert registry.refused == refused + 1  # one challenge, then every request carried the credentials
    assert lines[0] == f"pulling {registry.image}"
    assert re.fullmatch(rf"pulled {re.escape(registry.image)} in \d+ s", lines[-1])
    sized = [line for line in lines[1:-1] if line.startswith(f"pulling {registry.image}: ")]
    assert sized and all(re.fullmatch(r".*: \d+% of [\d.]+ [kM]B \([01] of 1 layers\)", line) for line in sized)
    out, handle = await run(runtime, spec(registry.image, "echo pulled and running"))
    assert (await handle.wait()).exit_code == 0 and out.data[OUT] == b"pulled and running\n"
    await handle.remove()
    docker_engine.cli("rmi", registry.image)


def inspect(docker_engine: Dockerd, container_id: str) -> dict:
    return json.loads(docker_engine.cli("inspect", container_id).stdout)[0]


async def test_the_container_gets_what_the_spec_asks(runtime: DockerRuntime, docker_engine: Dockerd,
                                                     busybox_image: str, tmp_path: Path) -> None:
    """GPUs as nvidia device requests (only when asked), memory without swap, CPUs, shm, mounts, labels, host
    networking, tini, and an unrotated byte-exact log, as the engine records them."""
    base = spec(busybox_image, "true", memory=256 * 2**20, cpus=1.5, shm_size=2**27, labels={"incl.job": "j1"},
                env={"A": "1"}, working_dir="/tmp", mounts=[Mount(source=str(tmp_path), target="/data",
                                                                  read_only=True)])
    gpus = {"none": None, "some": [0, 2], "all": "all"}
    found = {}
    for key, value in gpus.items():
        container_id = await runtime.create(msgspec.structs.replace(base, name=f"{base.name}-{key}", gpus=value))
        found[key] = inspect(docker_engine, container_id)
        docker_engine.cli("rm", container_id)
    assert not found["none"]["HostConfig"]["DeviceRequests"]
    [some] = found["some"]["HostConfig"]["DeviceRequests"]
    assert (some["Driver"], some["DeviceIDs"], some["Capabilities"]) == ("nvidia", ["0", "2"], [["gpu"]])
    [every] = found["all"]["HostConfig"]["DeviceRequests"]
    assert (every["Driver"], every["Count"], every["Capabilities"]) == ("nvidia", -1, [["gpu"]])
    host, config = found["none"]["HostConfig"], found["none"]["Config"]
    assert host["Memory"] == host["MemorySwap"] == 256 * 2**20
    assert (host["NanoCpus"], host["ShmSize"], host["NetworkMode"], host["Init"]) == (1_500_000_000, 2**27,
                                                                                      "host", True)
    assert host["Binds"] == [f"{tmp_path}:/data:ro"] and host["AutoRemove"] is False
    assert host["LogConfig"]["Type"] == "local" and host["LogConfig"]["Config"]["max-file"] == "1"
    assert {"A=1", "TINI_KILL_PROCESS_GROUP=1"} <= set(config["Env"])
    assert (config["Labels"], config["WorkingDir"], config["Entrypoint"], config["Cmd"]) == (
        {"incl.job": "j1"}, "/tmp", ["/bin/sh"], ["-c", "true"])


READOPT_JOB = r"""
    printf 'start \377\376\n'
    head -c 40000 /dev/zero | tr '\0' y; echo
    seq 1 3000
    echo "to stderr" >&2
    echo waiting
    while [ ! -e /ctl/go ]; do sleep 0.05; done
    echo after; echo "late err" >&2
    exit 4
"""


async def test_a_restarted_agent_readopts_a_running_container(docker_engine: Dockerd, busybox_image: str,
                                                              tmp_path: Path) -> None:
    """A second runtime finds the running container by its labels, replays its output byte for byte from the
    start, follows the rest and gets its exit code."""
    labels = {"incl.test": uuid.uuid4().hex}
    first = Output()
    async with DockerRuntime(DockerSettings(url=docker_engine.url, **SETTINGS)) as docker:
        handle = await docker.start(spec(busybox_image, READOPT_JOB, labels=labels,
                                         mounts=[Mount(source=str(tmp_path), target="/ctl")]), first.sink)
        await first.until(OUT, b"waiting\n")
        await first.until(ERR, b"to stderr\n")
    # The agent process is gone; its container is not.
    async with DockerRuntime(DockerSettings(url=docker_engine.url, **SETTINGS)) as docker:
        [found] = await docker.find(labels)
        assert (found.id, found.running, found.labels) == (handle.id, True, labels)
        again = Output()
        found.follow(again.sink)
        await again.until(OUT, b"waiting\n")
        assert again.data == first.data
        (tmp_path / "go").touch()
        end = await found.wait()
        await found.remove()
    assert end.exit_code == 4
    assert bytes(again.data[OUT]) == bytes(first.data[OUT]) + b"after\n"
    assert bytes(again.data[ERR]) == b"to stderr\nlate err\n"


async def test_a_container_that_exited_while_the_agent_was_away(docker_engine: Dockerd, busybox_image: str,
                                                                tmp_path: Path) -> None:
    """A container that ended while no agent ran is still there, with its exit code and all its output."""
    labels = {"incl.test": uuid.uuid4().hex}
    async with DockerRuntime(DockerSettings(url=docker_engine.url, **SETTINGS)) as docker:
        out, handle = await run(docker, spec(busybox_image, READOPT_JOB, labels=labels,
                                             mounts=[Mount(source=str(tmp_path), target="/ctl")]))
        await out.until(OUT, b"waiting\n")
    (tmp_path / "go").touch()
    await asyncio.to_thread(docker_engine.cli, "wait", handle.id)
    async with DockerRuntime(DockerSettings(url=docker_engine.url, **SETTINGS)) as docker:
        [found] = await docker.find(labels)
        assert not found.running
        replay = Output()
        found.follow(replay.sink)
        end = await found.wait()
        await found.remove()
        assert await docker.find(labels) == []
    assert end.exit_code == 4
    assert bytes(replay.data[OUT]) == (b"start \xff\xfe\n" + b"y" * 40000 + b"\n"
                                       + b"".join(b"%d\n" % i for i in range(1, 3001)) + b"waiting\nafter\n")
    assert bytes(replay.data[ERR]) == b"to stderr\nlate err\n"


async def test_host_networking_reaches_the_hosts_loopback(runtime: DockerRuntime, busybox_image: str) -> None:
    """A container shares the host's network: it connects to a server the test runs on 127.0.0.1."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.readline())
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, handle = await run(runtime, spec(busybox_image, f"echo hello from the container | nc 127.0.0.1 {port}"))
        assert await asyncio.wait_for(received, 20) == b"hello from the container\n"
        assert (await handle.wait()).exit_code == 0
        await handle.remove()


async def test_a_python_job_runs_in_a_debian_image(runtime: DockerRuntime, python_image: str, tmp_path: Path) -> None:
    """python3 in the debootstrapped image runs, with its env, working dir and a read-only mount."""
    image = python_image
    (tmp_path / "input.txt").write_text("data from the host")
    code = ("import json, os, pathlib\n"
            "p = pathlib.Path('/data/input.txt')\n"
            "try:\n    p.write_text('x'); ro = False\nexcept OSError:\n    ro = True\n"
            "print(json.dumps([os.environ['GREETING'], os.getcwd(), p.read_text(), ro]))\n")
    container = ContainerSpec(name=f"incl-test-{uuid.uuid4().hex[:10]}", image=image, argv=["python3", "-c", code],
                              env={"GREETING": "hi", "PATH": "/usr/bin:/bin"}, working_dir="/tmp",
                              mounts=[Mount(source=str(tmp_path), target="/data", read_only=True)])
    out, handle = await run(runtime, container)
    end = await handle.wait()
    await handle.remove()
    assert end.exit_code == 0, bytes(out.data[ERR])
    assert json.loads(out.data[OUT]) == ["hi", "/tmp", "data from the host", True]


async def test_an_engine_that_is_not_there_is_a_clear_error(tmp_path: Path) -> None:
    """With no engine at the address, available() says no and starting a container says why."""
    url = f"unix://{tmp_path}/docker.sock"
    async with DockerRuntime(DockerSettings(url=url, request_timeout=2.0)) as docker:
        assert not await docker.available()
        with pytest.raises(ContainerFailure) as failure:
            await docker.start(spec("incl-test/busybox:1", "true"), Output().sink)
    assert failure.value.reason == (f"the Docker engine at {url} is not reachable (creating the container): "
                                    "No such file or directory")


async def test_output_a_follow_missed_is_delivered_after_the_exit(runtime: DockerRuntime, docker_engine: Dockerd,
                                                                  busybox_image: str, tmp_path: Path) -> None:
    """What a follow missed (Docker 20.10 ends follows early, streams break) is delivered after the exit,
    once and in order, whether it is among the log's last messages or further back."""
    api = docker_engine.cli("version", "--format", "{{.Server.APIVersion}}").stdout.decode().strip()
    repair = tuple(map(int, api.split("."))) < (1, 42)
    async with aiodocker.Docker(url=docker_engine.url) as docker:
        for window in (10_000, 3):
            script = (f"seq 1 500; head -c 40000 /dev/zero | tr '\\0' z; echo; echo waiting; "
                      f"while [ ! -e /ctl/go-{window} ]; do sleep 0.05; done; seq 501 1000; echo err >&2")
            container_id = await runtime.create(spec(busybox_image, script,
                                                     mounts=[Mount(source=str(tmp_path), target="/ctl")]))
            docker_engine.cli("start", container_id)
            out = Output()
            cursor = LogCursor(out.sink, repair_split_lines=repair)
            following = asyncio.create_task(cursor.follow(docker, container_id, connect_timeout=10))
            await out.until(OUT, b"waiting\n")
            following.cancel()  # the stream breaks
            with contextlib.suppress(asyncio.CancelledError):
                await following
            (tmp_path / f"go-{window}").touch()
            await asyncio.to_thread(docker_engine.cli, "wait", container_id)
            for _ in range(2):  # a second catch-up finds nothing new
                await cursor.catch_up(docker, container_id, window=window, connect_timeout=10)
            docker_engine.cli("rm", container_id)
            assert bytes(out.data[OUT]) == (b"".join(b"%d\n" % i for i in range(1, 501)) + b"z" * 40000
                                            + b"\nwaiting\n" + b"".join(b"%d\n" % i for i in range(501, 1001)))
            assert bytes(out.data[ERR]) == b"err\n"
