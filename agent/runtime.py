"""The `process` runtime: a job's command in its own process group, started by the agent's fork server.

`Launcher` owns the fork server (see launcher.py for why it exists and what it guarantees). Output arrives
as raw chunks through `sink(stream, chunk)`; splitting into lines is the log shipper's business. A job is
over when its command has exited: the fork server's guard has then killed whatever the job left behind, and
its output is read for at most the drain timeout more. Stopping sends SIGTERM to the whole group, waits the
grace period, then has the guard SIGKILL every process of the job, those that left the group included.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from incl.proto.messages import Stream

LAUNCHER = str(Path(__file__).with_name("launcher.py"))
READ_CHUNK = 256 * 1024
MAX_PACKET = 1 << 20
EXIT_TIMEOUT = 5.0  # for the fork server to end its jobs and exit once the agent closes its end

OutputSink = Callable[[Stream, bytes], Awaitable[None]]

log = structlog.get_logger()


class ProcessHandle:
    def __init__(self, pid: int, ended: asyncio.Future[tuple[int, dict[str, Any] | None]],
                 readers: list[asyncio.Task[None]]) -> None:
        self.pid = pid  # also the process group id: the guard leads its own group
        self._ended = ended
        self._readers = readers
        self.notes: list[str] = []  # what the job's log should say about how it ended

    async def wait(self, drain_timeout: float) -> int:
        """The command's exit status (negative: killed by that signal), once the job's processes are gone and
        its output has been read (for at most `drain_timeout` more: a pipe held open from outside the job)."""
        code, killed = await asyncio.shield(self._ended)
        if killed is not None:
            self.notes.append(_killed_note(killed))
        if self._readers:
            _, open_ = await asyncio.wait(self._readers, timeout=drain_timeout)
            for reader in open_:
                reader.cancel()
            await asyncio.gather(*open_, return_exceptions=True)
            if open_:
                log.warning("output_drain_timeout", pid=self.pid, drain_timeout=drain_timeout)
                self.notes.append(f"output still open {drain_timeout:g} s after the command ended: stopped reading it")
            self._readers = []
        return code

    async def stop(self, grace: float) -> None:
        """SIGTERM to the job's group; after `grace`, SIGKILL to every process of the job (by its guard)."""
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGKILL):  # the last one only if the guard is stuck
            if self._ended.done():
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if sig == signal.SIGUSR1:
                    os.kill(self.pid, sig)
                else:
                    os.killpg(self.pid, sig)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ended), timeout=grace)


_JSON = msgspec.json.Decoder()


def _packet(request: dict[str, Any]) -> bytes:
    """A request as the fork server's JSON, encoded in C (the job's environment is most of it). A string that is
    not valid UTF-8 (an environment variable's undecodable bytes, kept as surrogates) goes through json.dumps."""
    try:
        return msgspec.json.encode(request)
    except (msgspec.EncodeError, UnicodeEncodeError):
        return json.dumps(request).encode()


def _killed_note(report: dict[str, Any]) -> str:
    count, procs = report["count"], report["procs"]
    named = ", ".join(f"{name} (pid {pid})" for pid, name in procs)
    more = f", and {count - len(procs)} more" if count > len(procs) else ""
    return f"killed {count} leftover process{'es' if count > 1 else ''}: {named}{more}"


async def _pump(fd: int, stream: Stream, sink: OutputSink) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd, "rb", buffering=0))
    try:
        while chunk := await reader.read(READ_CHUNK):
            await sink(stream, chunk)
    finally:
        transport.close()


class Launcher:
    """The fork server's lifespan: `async with Launcher() as launcher: await launcher.start(...)`.

    With `cgroups` (the default) each job runs in a cgroup of its own where the fork server can create one."""

    def __init__(self, cgroups: bool = True) -> None:
        self._cgroups = cgroups
        self._lingers = False  # it outlives the agent until its lease ends (it guards containers)
        self.fenced: set[int | str] = set()  # guard pids and container ids the fork server stopped (lease ran out)
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._exits: dict[int, asyncio.Future[tuple[int, dict[str, Any] | None]]] = {}
        self._killed: dict[int, dict[str, Any]] = {}  # a guard's report on the leftovers it killed, until its exit

    async def __aenter__(self) -> Launcher:
        await self._spawn()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Closing our end tells the fork server the agent is gone: it ends the process jobs at once and, when
        it holds a lease with containers, lives on alone until that lease is over (see launcher.py)."""
        if self._reader is not None:
            self._reader.cancel()
        if self._sock is not None:
            self._sock.close()
        if self._proc is None or self._lingers:
            return
        try:
            await asyncio.wait_for(self._proc.wait(), timeout=EXIT_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()

    async def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", LAUNCHER, str(theirs.fileno()), str(os.getpid()),
            *([] if self._cgroups else ["nocgroup"]),
            pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL)
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._reader = asyncio.create_task(self._read(ours))

    async def _read(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(sock, MAX_PACKET):
            msg = _JSON.decode(data)
            if "fenced" in msg:  # the lease ran out while the agent could not act: before the exits that follow
                self.fenced.update(msg["fenced"])
                self.fenced.update(msg["containers"])
                continue
            if "killed" in msg:  # always before that guard's "exited", perhaps before its "pid"
                self._killed[msg["killed"]] = msg
                continue
            if "exited" in msg:
                killed = self._killed.pop(msg["exited"], None)
                exit_status = self._exits.get(msg["exited"])
                if exit_status is not None and not exit_status.done():
                    exit_status.set_result((msg["status"], killed))
                continue
            if "pid" in msg:  # the exit may follow in the same breath: its future must exist first
                self._exits[msg["pid"]] = loop.create_future()
            future = self._replies.pop(msg["id"], None)
            if future is not None and not future.done():
                future.set_result(msg)
        # The launcher died: its guards die with it (and their jobs), so every job here has ended.
        log.error("launcher_died", jobs=len(self._exits))
        for exit_status in self._exits.values():
            if not exit_status.done():
                exit_status.set_result((-signal.SIGKILL, None))
        for future in self._replies.values():
            if not future.done():
                future.set_exception(OSError("the agent's launcher died"))
        self._exits.clear()
        self._killed.clear()
        self._replies.clear()
        sock.close()
        self._sock = None

    def renew(self, seconds: float, grace: float, docker_socket: str | None, containers: list[str],
              lock: str) -> None:
        """Hand the fork server the agent's lease: past `seconds` from now it stops every job and `containers`,
        then kills them `grace` later, even if the agent itself is frozen or dead (unless a new agent process
        holds the work dir's `lock`: it has taken the containers over)."""
        if self._sock is None:
            return
        packet = json.dumps({"lease": seconds, "grace": grace, "docker": docker_socket, "containers": containers,
                             "lock": lock}).encode()
        self._lingers = docker_socket is not None and bool(containers)
        with contextlib.suppress(BlockingIOError):  # the next renewal will do
            self._sock.send(packet)

    async def start(self, argv: list[str], cwd: str, env: dict[str, str], sink: OutputSink,
                    uid: int | None = None) -> ProcessHandle:
        """Start `argv` in a new process group, as user `uid` with its own group (None: the agent's user); its
        output goes to `sink`."""
        if self._sock is None:
            await self._spawn()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        reply = self._replies[request_id] = loop.create_future()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        packet = _packet({"id": request_id, "argv": argv, "cwd": cwd, "env": env, "uid": uid})
        try:
            while True:
                try:
                    socket.send_fds(self._sock, [packet], [out_w, err_w])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        finally:
            os.close(out_w)
            os.close(err_w)
        answer = await reply
        if "error" in answer:
            os.close(out_r)
            os.close(err_r)
            raise OSError(answer["error"])
        pid = answer["pid"]
        exit_status = self._exits[pid]
        exit_status.add_done_callback(lambda _: self._exits.pop(pid, None))
        readers = [asyncio.create_task(_pump(out_r, Stream.STDOUT, sink)),
                   asyncio.create_task(_pump(err_r, Stream.STDERR, sink))]
        return ProcessHandle(pid, exit_status, readers)
