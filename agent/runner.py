"""One attempt of one job on this agent: prepare its files, run it, ship its output, save its results.

prepare (code from the snapshot, checkpoint restore, data) → run (processes or a container, see execution.py)
→ finish (checkpoint sync, outputs upload, the exit event). A container outlives a crashed agent: the
restarted agent builds a Runner for it with `adopt`, which skips preparing and resumes shipping its output.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from incl.agent import jobuser, runtime
from incl.agent.channel import MetricChannel
from incl.agent.config import AgentConfig
from incl.agent.docker import ContainerHandle, ContainerSpec, DockerRuntime, Mount
from incl.agent.execution import ContainerExecution, Execution, Outcome, ProcessExecution
from incl.agent.jobuser import JobUsers
from incl.agent.metricsummary import Summary
from incl.agent.shipper import LineSplitter, Shipper
from incl.agent.telemetry import GpuReading, ProcessTreeJobs
from incl.agent.workspace import TRASH, JobFiles, Workspace, link_data
from incl.artifacts.store import ArtifactStore
from incl.auth.sealing import AgentKey, SealError, seal
from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.messages import (
    AgentEvent,
    Assign,
    JobExited,
    JobReady,
    JobRef,
    JobRunning,
    JobStarting,
    LogBatch,
    LogLine,
    MetricBatch,
    MetricColumns,
    MetricPoint,
    MetricSummary,
    Stream,
    TreeRef,
)
from incl.proto.spec import DataMount

log = structlog.get_logger()

T = TypeVar("T")
Publish = Callable[[AgentEvent], Awaitable[None]]

# Where a container sees the job's folders.
IN_CONTAINER = {"code": "/incl/code", "outputs": "/incl/outputs", "checkpoints": "/incl/checkpoints",
                "sdk": "/incl/sdk", "run": "/incl/run", "metrics": "/incl/metrics"}


class Redactor:
    """Replaces each secret's value in job output with `<secret:NAME>` before it leaves the agent.

    Exact byte matches of values at least MIN_LENGTH long (a shorter one, such as "1", would mangle the log and
    hide little); the longest value wins where one contains another. A value split across two writes is found:
    the line splitter redacts whole lines, and holds back `longest - 1` bytes where it cuts a very long one."""

    MIN_LENGTH = 3

    def __init__(self, secrets: dict[str, str]) -> None:
        self._names: dict[bytes, bytes] = {}
        for name, value in sorted(secrets.items()):
            raw = value.encode()
            if len(raw) >= self.MIN_LENGTH:
                self._names.setdefault(raw, f"<secret:{name}>".encode())
        longest_first = sorted(self._names, key=len, reverse=True)
        self.longest = len(longest_first[0]) if longest_first else 0
        self._pattern = re.compile(b"|".join(map(re.escape, longest_first))) if longest_first else None

    def __call__(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self._pattern.sub(lambda m: self._names[m.group()], data)

    def lines(self, lines: list[LogLine]) -> list[LogLine]:
        if self._pattern is None:
            return lines
        return [msgspec.structs.replace(line, data=self(line.data)) if self._pattern.search(line.data) else line
                for line in lines]

    def text(self, text: str) -> str:
        return self(text.encode()).decode("utf-8", "replace") if self._pattern is not None else text


class Resume:
    """Where a re-adopted container's output shipping resumes: lines already shipped and the next batch seqs."""

    def __init__(self, stdout: int = 0, stderr: int = 0, log_seq: int = 0, metric_seq: int = 0) -> None:
        self.stdout, self.stderr, self.log_seq, self.metric_seq = stdout, stderr, log_seq, metric_seq


class Runner:
    def __init__(self, cfg: AgentConfig, bus: Bus, publish: Publish, assign: Assign, *,
                 launcher: runtime.Launcher, docker: DockerRuntime | None = None,
                 store: ArtifactStore | None = None, gpus: list[int] | None = None,
                 job_pids: ProcessTreeJobs | None = None, resume: Resume | None = None,
                 key: AgentKey | None = None, job_users: JobUsers | None = None,
                 gpu_readings: Callable[[list[int]], list[GpuReading]] | None = None) -> None:
        self.cfg = cfg
        self._job_users = job_users
        self._gpu_readings = gpu_readings  # the newest reading of GPUs by index (the agent's sampler)
        self._uid: int | None = None  # a process job's own user (incl.agent.jobuser), None: the agent's
        self._launcher, self._docker, self._store = launcher, docker, store
        self._gpus = gpus  # None: this host has no GPUs to hand out
        self._job_pids = job_pids
        self._publish = publish
        self.assign = at_rest(assign, key)
        self._secrets, self._unopened = opened(assign, key)  # clear only in memory: the env and the redactor
        self.ref = JobRef(job_id=assign.job_id, attempt=assign.attempt)
        self.ws = Workspace(Path(cfg.work_dir), assign.job_id, assign.attempt)
        self._exec: Execution | None = None
        self._sockets: Path | None = None  # the metric socket's folder (_socket_dir)
        self._stop_reason: str | None = None
        self._cancelled = self._preempted = False
        self._grace = cfg.cancel_grace
        self._tail: collections.deque[bytes] = collections.deque(maxlen=cfg.tail_lines)
        self._redact = Redactor(self._secrets)
        self._splitter = LineSplitter(cfg.max_line_bytes, self._redact, hold=self._redact.longest - 1)
        resume = resume or Resume()
        self._skip = {Stream.STDOUT: resume.stdout, Stream.STDERR: resume.stderr}  # replayed lines to drop
        self._totals = {Stream.STDOUT: resume.stdout, Stream.STDERR: resume.stderr}
        a = assign
        common: dict[str, Any] = dict(max_items=cfg.batch_max_lines, max_bytes=cfg.batch_max_bytes,
                      buffer_max_bytes=cfg.buffer_max_bytes, flush_interval=cfg.flush_interval,
                      timeout=cfg.request_timeout, retry_initial=cfg.retry_initial, retry_max=cfg.retry_max)
        self.rank = a.gang.rank if a.gang is not None else 0
        tag = f"{a.job_id}.{a.attempt}" + (f".r{self.rank}" if self.rank else "")  # each rank's own dedup ids
        me = cfg.agent_id  # the last token of what it writes: the server refuses it under any other agent's name
        self._logs = Shipper(bus, subjects.logs(a, a.output_key, me), f"{tag}.log", self._log_batch,
                             first_seq=resume.log_seq, **common)
        self._bus, self._tag = bus, tag
        # The attempt's metrics reduced as they come, written after the last batch (agent/metricsummary.py): not
        # for a rank of a multi-node job (a reader takes the last message of rank 0's subject), nor for an
        # attempt re-adopted after a crash (the points shipped before it are not in this process's summary).
        self._summary = Summary() if a.gang is None and not resume.metric_seq else None
        self._metrics = Shipper(bus, subjects.metrics(a, a.output_key, me), f"{tag}.metric",
                                lambda seq, pts: MetricBatch(job_id=a.job_id, attempt=a.attempt, seq=seq,
                                                             points=MetricColumns.of(pts),
                                                             rank=self.rank),
                                first_seq=resume.metric_seq, **common)
        self._released = asyncio.Event()  # a multi-node rank: every rank is ready (GangStart)
        self._stopped = asyncio.Event()
        self._gang_env: dict[str, str] = {}

    @property
    def container_id(self) -> str | None:
        return self._exec.container_id if isinstance(self._exec, ContainerExecution) else None

    def fenced_by(self, stopped: set[int | str]) -> bool:
        """Whether the fork server stopped this attempt when the lease ran out (`stopped`: the guard pids and
        containers it names)."""
        if isinstance(self._exec, ContainerExecution):
            return self._exec.container_id in stopped
        if isinstance(self._exec, ProcessExecution):
            return self._exec.pid in stopped
        return False

    def stop(self, reason: str, grace: float | None = None, cancelled: bool = False, preempted: bool = False) -> None:
        """Ask the attempt to stop: SIGTERM to all its processes, SIGKILL after the grace period. Its checkpoint
        and outputs are saved once it has ended, however it ends."""
        if self._stop_reason is not None:
            return
        self._stop_reason, self._cancelled, self._preempted = reason, cancelled, preempted
        self._stopped.set()
        if grace is not None:
            self._grace = grace
        if self._exec is not None:
            self._exec.stop(self._grace)

    # --- output -------------------------------------------------------------------------------------------

    def _log_batch(self, seq: int, lines: list[LogLine]) -> LogBatch:
        for line in lines:
            if line.stream in self._totals:
                self._totals[line.stream] += 1
        return LogBatch(job_id=self.ref.job_id, attempt=self.ref.attempt, seq=seq, lines=lines, rank=self.rank,
                        stdout_total=self._totals[Stream.STDOUT], stderr_total=self._totals[Stream.STDERR])

    async def _on_output(self, stream: Stream, chunk: bytes) -> None:
        lines = self._splitter.feed(stream, chunk)
        if self._skip.get(stream):
            drop = min(self._skip[stream], len(lines))
            self._skip[stream] -= drop
            lines = lines[drop:]
        if lines:
            await self._ship_lines(lines)

    async def _ship_lines(self, lines: list[LogLine]) -> None:
        lines = self._redact.lines(lines)  # before anything leaves the agent: the log, the tail
        self._tail.extend(line.data for line in lines[-self.cfg.tail_lines:])
        await self._logs.add(lines, sum(len(line.data) for line in lines) + 16 * len(lines))

    async def _system(self, text: str) -> None:
        await self._ship_lines([LogLine(ts=time.time(), stream=Stream.SYSTEM, data=text.encode())])

    async def _on_metric(self, point: MetricPoint) -> None:
        if self._summary is not None:
            self._summary.add(point)
        await self._metrics.add([point], 32 + 24 * len(point.values))

    async def _write_summary(self) -> None:
        """The metric summary after the last batch; best effort: without it a chart reads every point. At most
        half a message: coarser (fewer buckets per metric) when there are many metrics, none below 64."""
        if not self._summary:
            return
        a = self.assign
        for at_most in (None, 512, 256, 128, 64):
            data = encode(MetricSummary(job_id=a.job_id, attempt=a.attempt, batches=self._metrics.seq,
                                        series=self._summary.series(at_most), rank=self.rank))
            if len(data) <= self._bus.max_payload // 2:
                break
        else:
            log.info("metric_summary_too_large", size=len(data))
            return
        subject = subjects.metrics(a, a.output_key, self.cfg.agent_id)
        try:
            await self._bus.publish_durable(subject, data, msg_id=f"{self._tag}.summary",
                                            timeout=self.cfg.request_timeout)
        except Exception as exc:  # noqa: BLE001 - a chart reads every point instead; the attempt goes on ending
            log.warning("metric_summary_not_written", error=repr(exc))

    # --- preparing ----------------------------------------------------------------------------------------

    def _has_preparation(self) -> bool:
        spec = self.assign.spec
        return bool(self.assign.code or spec.workdir or spec.setup or spec.image or spec.data or self.ref.attempt > 1)

    async def _prepare(self, files: JobFiles | None) -> list[Mount]:
        """Code, checkpoints and data in place; the data mounts a container needs. Raises PrepareFailed."""
        spec, code = self.assign.spec, self.assign.code
        if code is not None:
            if files is None:
                raise PrepareFailed("the job has a code snapshot but this agent has no artifact store")
            got = await _step("fetching the job's code", files.fetch_code(code))
            await self._system(f"incl: code {code.digest[:12]}: {got.files} files, "
                               f"{got.downloaded_bytes} bytes downloaded ({got.downloaded_blobs} blobs)")
        if files is not None and (restored := await _step("restoring checkpoints", files.restore_checkpoints())):
            await self._system(f"incl: checkpoint restored: {restored.files} files")
        mounts = []
        for mount in spec.data:
            source = await _step(f"fetching data {mount.source}", _fetch_data(files, mount))
            if spec.image:
                target = mount.target if mount.target.startswith("/") else f"{IN_CONTAINER['code']}/{mount.target}"
                mounts.append(Mount(source=str(source), target=target, read_only=True))
            else:
                link_data(self.ws.code, mount.target, source)
        return mounts

    def release(self, env: dict[str, str]) -> None:
        """Every rank is ready: start, with `env` (MASTER_ADDR, MASTER_PORT, NODE_RANK...)."""
        self._gang_env = dict(env)
        self._released.set()

    async def _barrier(self) -> None:
        """A rank of a multi-node attempt, prepared: say so (rank 0 with the port it keeps free for the
        rendezvous) and wait for every other rank, or a stop, or `gang_start_timeout`."""
        gang = self.assign.gang
        assert gang is not None
        port = free_port() if gang.rank == 0 else None
        await self._publish(self._event(JobReady, rank=gang.rank, port=port))
        await self._system(f"incl: rank {gang.rank} of {gang.nodes} ready; waiting for the others")
        waits = [asyncio.ensure_future(self._released.wait()), asyncio.ensure_future(self._stopped.wait())]
        try:
            done, _ = await asyncio.wait(waits, timeout=self.cfg.gang_start_timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        if not done:
            raise PrepareFailed(f"the other nodes were not all ready within {self.cfg.gang_start_timeout:g}s")

    # --- running ------------------------------------------------------------------------------------------

    def _socket_dir(self) -> Path:
        # Short (a unix socket path has ~100 bytes) and a folder of its own, so that a container that mounts it
        # sees the socket a restarted agent re-creates. Worked out once: asked three times per attempt.
        if self._sockets is None:
            rank = f"-r{self.rank}" if self.rank else ""  # the ranks of one job may share a host (local agents)
            self._sockets = (Path(tempfile.gettempdir()) / f"incl-{os.getuid()}" /
                             f"{self.ref.job_id}-{self.ref.attempt}{rank}")
        return self._sockets

    def _env(self, paths: dict[str, str], inherit: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INCL_")} if inherit else {}
        spec = self.assign.spec
        env.update(spec.env)
        env.update(self._secrets)
        env.update(self.assign.env)
        env.update(self._gang_env)
        env.update({
            "INCL_OUTPUT_DIR": paths["outputs"],
            "INCL_CHECKPOINT_DIR": paths["checkpoints"],
            "INCL_CODE_DIR": paths["code"],
            "INCL_METRICS_SOCKET": f"{paths['metrics']}/m.sock",
            "PYTHONPATH": paths["sdk"] + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
        })
        if self._gpus is not None:  # the host's indices of the GPUs this job was given (none for a CPU job)
            env["INCL_GPUS"] = ",".join(map(str, self._gpus))
            if inherit:  # processes see exactly their GPUs; a container gets them as a device request and
                # sees them renumbered from 0, so host indices there would hide them
                env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = env["INCL_GPUS"]
        return env

    def _host_paths(self) -> dict[str, str]:
        ws = self.ws
        return {"code": str(ws.code), "outputs": str(ws.outputs), "checkpoints": str(ws.checkpoints),
                "sdk": str(ws.sdk), "run": str(ws.run), "metrics": str(self._socket_dir())}

    def _execution(self, data_mounts: list[Mount]) -> Execution:
        spec = self.assign.spec
        if not spec.image:
            def on_pid(pid: int) -> None:
                if self._job_pids is not None:
                    self._job_pids.add(self.ref.job_id, pid)

            env = self._env(self._host_paths(), inherit=True)
            self._uid = self._job_users.allocate() if self._job_users is not None else None
            if self._uid is not None:  # its own folders, home and tmp: nothing of root's or another job's
                home, tmp = self.ws.dir / "home", self.ws.dir / "tmp"
                jobuser.hand_over(self._uid, self.ws.dir, [self.ws.code, self.ws.outputs, self.ws.checkpoints,
                                                           home, tmp])
                env.update(HOME=str(home), TMPDIR=str(tmp), USER=f"incl-{self._uid}", LOGNAME=f"incl-{self._uid}")
            return ProcessExecution(self._launcher, self.cfg.shell, spec.setup, spec.run, self.ws.code, env,
                                    self._on_output, on_pid, drain_timeout=self.cfg.output_drain_timeout,
                                    uid=self._uid)
        if self._docker is None:
            raise PrepareFailed(f"the job needs Docker for image {spec.image}, and agent {self.cfg.agent_id} "
                                "has no Docker engine")
        return ContainerExecution(self._docker, self._container_spec(data_mounts), self.ws.run, self._on_output,
                                  auth=_registry_auth(self._secrets), progress=self._system,
                                  poll_interval=self.cfg.docker.poll_interval)

    def _container_spec(self, data_mounts: list[Mount]) -> ContainerSpec:
        spec, host = self.assign.spec, self._host_paths()
        argv = ContainerExecution.write_scripts(self.ws.run, IN_CONTAINER["run"], spec.setup, spec.run)
        mounts = [Mount(source=host[k], target=IN_CONTAINER[k], read_only=(k == "sdk")) for k in IN_CONTAINER]
        return ContainerSpec(
            name=f"incl-{self.ref.job_id}-{self.ref.attempt}", image=spec.image or "", argv=argv,
            env=self._env(IN_CONTAINER, inherit=False), working_dir=IN_CONTAINER["code"],
            mounts=mounts + data_mounts, gpus=self._gpus or None, shm_size=spec.resources.shm_size,
            memory=spec.resources.memory, cpus=spec.resources.cpus, labels=self.labels())

    def labels(self) -> dict[str, str]:
        """How a restarted agent knows its containers (and the GPUs each holds)."""
        return {"incl.agent": self.cfg.agent_id, "incl.job": self.ref.job_id, "incl.attempt": str(self.ref.attempt),
                "incl.gpus": ",".join(map(str, self._gpus or []))}

    async def _running(self, pid: int | None) -> None:
        await self._publish(self._event(JobRunning, pid=pid))

    def _gpu_series(self) -> contextlib.AbstractAsyncContextManager[None]:
        """While the job runs, its GPUs' utilization and memory every `gpu_metrics_interval`, as metric points of
        its own (`sys/...`), so the job's charts show them over time (no step: by time)."""
        read, gpus = self._gpu_readings, self._gpus
        if read is None or not gpus:
            return contextlib.nullcontext()

        async def sample() -> None:
            if values := gpu_values(read(gpus)):
                await self._on_metric(MetricPoint(ts=time.time(), step=None, values=values))

        return every(self.cfg.gpu_metrics_interval, sample)

    def _checkpointing(self, files: JobFiles | None) -> contextlib.AbstractAsyncContextManager[None]:
        """Sync the checkpoint dir every `checkpoint.sync_every` while the job runs."""
        if files is None or self.rank != 0:
            return contextlib.nullcontext()
        return every(self.assign.spec.checkpoint.sync_every, lambda: self._sync_checkpoints(files))

    async def _sync_checkpoints(self, files: JobFiles, final: bool = False) -> None:
        started = time.monotonic()
        try:
            pushed = await files.sync_checkpoints(self.cfg.checkpoint_sync_attempts, self.cfg.checkpoint_retry_delay)
        except Exception as exc:  # noqa: BLE001 - checkpoints are best effort; the job's result stands
            log.warning("checkpoint_sync_failed", error=repr(exc))
            await self._system(f"incl: checkpoint sync failed: {exc}")
            return
        if pushed is None:
            return
        if pushed.uploaded_blobs:
            log.info("checkpoint_synced", files=pushed.files, uploaded=pushed.uploaded_bytes)
        if final and pushed.files:  # the one a later attempt resumes from: say so in the job's log
            await self._system(f"incl: checkpoint saved: {pushed.files} files, {pushed.uploaded_bytes} bytes "
                               f"uploaded in {time.monotonic() - started:.2f}s")

    async def run(self, adopt: ContainerHandle | None = None) -> None:
        structlog.contextvars.bind_contextvars(job_id=self.ref.job_id, attempt=self.ref.attempt)
        self._logs.start()
        self._metrics.start()
        files = (JobFiles(self._store, self.ws.create(), self.cfg.store, self.cfg.cache_max_bytes)
                 if self._store is not None else None)
        try:
            outcome = await self._attempt(files, adopt)
        except asyncio.CancelledError:
            # The agent is shutting down. A container keeps running and the next agent process re-adopts it,
            # replaying its output past what was shipped: ship only whole lines now, save and report nothing.
            await self._logs.close()
            await self._metrics.close()
            raise
        finally:
            if self._job_pids is not None:
                self._job_pids.remove(self.ref.job_id)
        outputs = await self._save(files) if files is not None else None
        if rest := self._splitter.flush():
            await self._ship_lines(rest)
        for note in outcome.notes:
            await self._system(f"incl: {note}")
        if reason := self._reason(outcome):
            await self._system(f"incl: {reason}")
        await self._logs.close()
        await self._metrics.close()
        await self._write_summary()
        await self._exited(outcome, outputs)
        if self._store is not None:
            self.ws.remove()
        TRASH.put(None, "", self._socket_dir())  # its metric socket's folder, empty now (kept if the agent stops)

    async def _attempt(self, files: JobFiles | None, adopt: ContainerHandle | None) -> Outcome:
        """Prepare (unless re-adopting) and run; every failure becomes the outcome's reason."""
        try:
            data_mounts: list[Mount] = []
            if adopt is None:
                self.ws.write_assignment(encode(self.assign))  # sealed: no clear secret on this disk
                if self._unopened is not None:
                    return Outcome(None, self._unopened)
                if self._has_preparation():
                    await self._publish(self._event(JobStarting))
                data_mounts = await self._prepare(files)
                if self.assign.gang is not None:
                    await self._barrier()
            if self._stop_reason is not None and adopt is None:
                return Outcome(None)
            self._exec = self._execution(data_mounts)
            if self._stop_reason is not None:
                self._exec.stop(self._grace)
            async with MetricChannel(str(self._socket_dir() / "m.sock"), self._on_metric, self._system,
                                     owner=self._uid), \
                    self._checkpointing(files), self._gpu_series():
                if isinstance(self._exec, ContainerExecution):
                    return await self._exec.run(_noop if adopt else self._running, adopt=adopt)
                return await self._exec.run(self._running)
        except PrepareFailed as exc:
            return Outcome(None, str(exc))
        except Exception as exc:
            log.exception("attempt_failed")
            return Outcome(None, f"agent error: {type(exc).__name__}: {exc}")

    def _keeps_outputs(self) -> bool:
        """A multi-node job keeps one rank's outputs (`outputs.ranks`, default 0), or every rank's."""
        ranks = self.assign.spec.outputs.ranks
        return ranks in ("all", self.rank)

    async def _save(self, files: JobFiles) -> TreeRef | None:
        """However the attempt ended: its last checkpoint and its outputs go to the store (a multi-node job's
        checkpoint from rank 0, restored on every rank)."""
        if self.rank == 0:
            await self._sync_checkpoints(files, final=True)
        if not self._keeps_outputs():
            return None
        try:
            outputs = await files.upload_outputs(self.assign.spec.outputs.exclude)
        except Exception as exc:  # noqa: BLE001 - the job's result stands; the failure is shown in its logs
            log.warning("outputs_upload_failed", error=repr(exc))
            await self._system(f"incl: uploading outputs failed: {exc}")
            return None
        if outputs is not None:
            await self._system(f"incl: outputs saved: {outputs.files} files, {outputs.bytes} bytes")
        return outputs

    def _reason(self, outcome: Outcome) -> str | None:
        code, reason = outcome.exit_code, outcome.reason
        if self._stop_reason is not None:
            return self._stop_reason
        if reason is None and code == 127:
            return "command not found (exit code 127)"
        if reason is None and code is not None and code < 0:
            return f"killed by signal {-code}"
        return reason

    async def _exited(self, outcome: Outcome, outputs: TreeRef | None) -> None:
        code = outcome.exit_code
        signal_ = -code if code is not None and code < 0 else None
        reason = self._reason(outcome)
        reason = self._redact.text(reason) if reason is not None else None
        await self._publish(self._event(
            JobExited, exit_code=code if signal_ is None else 128 + signal_, signal=signal_, reason=reason,
            cancelled=self._cancelled, preempted=self._preempted,
            tail=[b.decode("utf-8", "replace") for b in self._tail], outputs=outputs))
        log.info("attempt_ended", exit_code=code, reason=reason)

    def _event(self, cls: type[JobStarting | JobRunning | JobReady | JobExited], **fields: Any) -> AgentEvent:
        return cls(job_id=self.ref.job_id, attempt=self.ref.attempt, agent_id=self.cfg.agent_id, **fields)


def free_port() -> int:
    """A TCP port free on this host now (the rendezvous port rank 0 offers)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


class PrepareFailed(Exception):
    """The attempt could not be prepared; the message is the reason the user sees."""


async def _step(what: str, work: Awaitable[T]) -> T:
    try:
        return await work
    except PrepareFailed:
        raise
    except Exception as exc:
        raise PrepareFailed(f"{what} failed: {exc}") from exc


async def _fetch_data(files: JobFiles | None, mount: DataMount) -> Path:
    if files is None:
        raise PrepareFailed("data mounts need an artifact store on the agent")
    return await files.fetch_data(mount)


async def _noop(pid: int | None) -> None:
    return None


def opened(assign: Assign, key: AgentKey | None) -> tuple[dict[str, str], str | None]:
    """The assignment's secret values in clear, and why they could not be opened (None when they were)."""
    if assign.sealed is None:
        return dict(assign.spec.secrets), None  # no secrets, or from an older controller: in the spec
    if key is None:
        return {}, "the job's secrets are sealed and this agent has no key to open them"
    try:
        return {name: key.open(data) for name, data in assign.sealed.items()}, None
    except SealError as exc:
        return {}, f"the job's secrets could not be opened on agent: {exc} (was its key file replaced?)"


def at_rest(assign: Assign, key: AgentKey | None) -> Assign:
    """The assignment as this agent keeps it (in memory and in assign.msgpack): an older controller's clear
    values sealed to the agent's own key, like the rest."""
    if assign.sealed is not None or not assign.spec.secrets or key is None:
        return assign
    return msgspec.structs.replace(
        assign, spec=msgspec.structs.replace(assign.spec, secrets=dict.fromkeys(assign.spec.secrets, "")),
        sealed={name: seal(key.public, value) for name, value in assign.spec.secrets.items()})


def _registry_auth(secrets: dict[str, str]) -> dict[str, str] | None:
    if "REGISTRY_USERNAME" in secrets and "REGISTRY_PASSWORD" in secrets:
        return {"username": secrets["REGISTRY_USERNAME"], "password": secrets["REGISTRY_PASSWORD"]}
    return None


def gpu_values(readings: list[GpuReading]) -> dict[str, float]:
    """A job's GPUs as one metric point: mean utilization (%), memory used in all (GiB); what NVML could say."""
    utils = [r.util_gpu for r in readings if r.util_gpu is not None]
    memory = [r.memory_used for r in readings if r.memory_used is not None]
    values = {}
    if utils:
        values["sys/gpu_util"] = round(sum(utils) / len(utils), 1)
    if memory:
        values["sys/gpu_mem_gib"] = round(sum(memory) / 2**30, 3)
    return values


@contextlib.asynccontextmanager
async def every(seconds: float, act: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """`act()` every `seconds` while the block runs (never, for 0 or less); stopped when it ends."""
    if seconds <= 0:
        yield
        return

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            await act()

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
