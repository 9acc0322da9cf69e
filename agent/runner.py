"""One attempt of one job on this agent: prepare, run setup and the command, ship output, report the end."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from nats.js import JetStreamContext

import incl
from incl.agent import runtime
from incl.agent.channel import MetricChannel
from incl.agent.config import AgentConfig
from incl.agent.shipper import LineSplitter, Shipper
from incl.agent.telemetry import ProcessTreeJobs
from incl.proto import subjects
from incl.proto.messages import (
    AgentEvent,
    Assign,
    JobExited,
    JobRef,
    JobRunning,
    JobStarting,
    LogBatch,
    LogLine,
    MetricBatch,
    MetricPoint,
    Stream,
)

log = structlog.get_logger()

Publish = Callable[[AgentEvent], Awaitable[None]]
COPY_IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".venv", "*.pyc")


def sdk_dir(work_dir: Path) -> Path:
    """A folder holding only the standard-library `incl` SDK, put first on the job's PYTHONPATH."""
    target = work_dir / "sdk" / "incl"
    if not (target / "_sdk.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        src = Path(incl.__file__).parent
        for name in ("__init__.py", "_sdk.py"):
            shutil.copyfile(src / name, target / name)
    return target.parent


class Runner:
    def __init__(self, cfg: AgentConfig, js: JetStreamContext, publish: Publish, assign: Assign, *,
                 launcher: runtime.Launcher, gpus: list[int] | None = None,
                 job_pids: ProcessTreeJobs | None = None) -> None:
        self.cfg = cfg
        self._launcher = launcher
        self._gpus = gpus  # None: this host has no GPUs to hand out
        self._job_pids = job_pids
        self._js = js
        self._publish = publish
        self.assign = assign
        self.ref = JobRef(job_id=assign.job_id, attempt=assign.attempt)
        self._handle: runtime.ProcessHandle | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._stop_reason: str | None = None
        self._cancelled = False
        self._grace = cfg.cancel_grace
        self._tail: collections.deque[bytes] = collections.deque(maxlen=cfg.tail_lines)
        self._splitter = LineSplitter(cfg.max_line_bytes)
        a = assign
        common = dict(max_items=cfg.batch_max_lines, max_bytes=cfg.batch_max_bytes,
                      buffer_max_bytes=cfg.buffer_max_bytes, flush_interval=cfg.flush_interval,
                      timeout=cfg.request_timeout, retry_initial=cfg.retry_initial, retry_max=cfg.retry_max)
        self._logs = Shipper(js, subjects.logs(a.job_id), f"{a.job_id}.{a.attempt}.log",
                             lambda seq, lines: LogBatch(job_id=a.job_id, attempt=a.attempt, seq=seq, lines=lines),
                             **common)
        self._metrics = Shipper(js, subjects.metrics(a.job_id), f"{a.job_id}.{a.attempt}.metric",
                                lambda seq, pts: MetricBatch(job_id=a.job_id, attempt=a.attempt, seq=seq, points=pts),
                                **common)

    def stop(self, reason: str, grace: float | None = None, cancelled: bool = False) -> None:
        """Ask the attempt to stop: SIGTERM to its process group, SIGKILL after the grace period."""
        if self._stop_reason is not None:
            return
        self._stop_reason, self._cancelled = reason, cancelled
        if grace is not None:
            self._grace = grace
        if self._handle is not None:
            self._stopping = asyncio.create_task(self._handle.stop(self._grace))

    # --- output -------------------------------------------------------------------------------------------

    async def _on_output(self, stream: Stream, chunk: bytes) -> None:
        lines = self._splitter.feed(stream, chunk)
        if lines:
            await self._ship_lines(lines)

    async def _ship_lines(self, lines: list[LogLine]) -> None:
        self._tail.extend(line.data for line in lines[-self.cfg.tail_lines:])
        await self._logs.add(lines, sum(len(line.data) for line in lines) + 16 * len(lines))

    async def _system(self, text: str) -> None:
        await self._ship_lines([LogLine(ts=time.time(), stream=Stream.SYSTEM, data=text.encode())])

    async def _on_metric(self, point: MetricPoint) -> None:
        await self._metrics.add([point], 32 + 24 * len(point.values))

    # --- the attempt --------------------------------------------------------------------------------------

    def _dirs(self) -> tuple[Path, Path, Path]:
        job_root = Path(self.cfg.work_dir) / "jobs" / self.ref.job_id
        code = job_root / f"attempt-{self.ref.attempt}" / "code"
        outputs, checkpoints = job_root / "outputs", job_root / "checkpoints"
        for d in (code, outputs, checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        return code, outputs, checkpoints

    def _env(self, outputs: Path, checkpoints: Path, socket_path: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INCL_")}
        env.update(self.assign.spec.env)
        env.update(self.assign.env)
        sdk = str(sdk_dir(Path(self.cfg.work_dir)))
        env.update({
            "INCL_OUTPUT_DIR": str(outputs),
            "INCL_CHECKPOINT_DIR": str(checkpoints),
            "INCL_METRICS_SOCKET": socket_path,
            "PYTHONPATH": sdk + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
            "PYTHONUNBUFFERED": "1",
        })
        if self._gpus is not None:  # a job sees exactly the GPUs it was given (none for a CPU job)
            env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, self._gpus))
            env["INCL_GPUS"] = env["CUDA_VISIBLE_DEVICES"]
        return env

    async def _prepare_code(self, code: Path) -> str | None:
        workdir = self.assign.spec.workdir
        if not workdir:
            return None
        if not Path(workdir).is_dir():
            return f"workdir {workdir} does not exist on agent {self.cfg.agent_id}"
        await asyncio.to_thread(shutil.copytree, workdir, code, ignore=COPY_IGNORE, symlinks=True,
                                dirs_exist_ok=True)
        return None

    async def _start(self, script: str, cwd: Path, env: dict[str, str]) -> runtime.ProcessHandle:
        self._handle = await self._launcher.start([self.cfg.shell, "-c", script], str(cwd), env, self._on_output)
        if self._job_pids is not None:
            self._job_pids.add(self.ref.job_id, self._handle.pid)
        if self._stop_reason is not None:  # stopped while it was starting
            self._stopping = asyncio.create_task(self._handle.stop(self._grace))
        return self._handle

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(job_id=self.ref.job_id, attempt=self.ref.attempt)
        self._logs.start()
        self._metrics.start()
        exit_code: int | None = None
        reason: str | None = None
        try:
            spec = self.assign.spec
            if spec.workdir or spec.setup:  # something to prepare first: say so (nothing: straight to RUNNING)
                await self._publish(self._event(JobStarting))
            code, outputs, checkpoints = self._dirs()
            reason = await self._prepare_code(code)
            sock = os.path.join(tempfile.gettempdir(), f"incl-{os.getuid()}", f"{self.ref.job_id}-{self.ref.attempt}.sock")
            env = self._env(outputs, checkpoints, sock)
            async with MetricChannel(sock, self._on_metric):
                if reason is None and spec.setup and self._stop_reason is None:
                    status = await (await self._start(spec.setup, code, env)).wait()
                    if status != 0 and self._stop_reason is None:
                        exit_code, reason = status, f"setup failed with exit code {status}"
                if reason is None and self._stop_reason is None:
                    handle = await self._start(spec.run, code, env)
                    await self._publish(self._event(JobRunning, pid=handle.pid))
                    exit_code = await handle.wait()
        except Exception as exc:
            log.exception("attempt_failed")
            reason = reason or f"agent error: {type(exc).__name__}: {exc}"
        finally:
            if self._job_pids is not None:
                self._job_pids.remove(self.ref.job_id)
            if rest := self._splitter.flush():
                await self._ship_lines(rest)
            if reason:
                await self._system(f"incl: {reason}")
            await self._logs.close()
            await self._metrics.close()
        signal_ = -exit_code if exit_code is not None and exit_code < 0 else None
        if exit_code == 127 and reason is None:
            reason = "command not found (exit code 127)"
        if self._stop_reason is not None:
            reason = self._stop_reason
        elif signal_ is not None and reason is None:
            reason = f"killed by signal {signal_}"
        await self._publish(self._event(
            JobExited, exit_code=exit_code if signal_ is None else 128 + signal_, signal=signal_,
            reason=reason, cancelled=self._cancelled,
            tail=[b.decode("utf-8", "replace") for b in self._tail]))
        log.info("attempt_ended", exit_code=exit_code, reason=reason)

    def _event(self, cls: type[AgentEvent], **fields: object) -> AgentEvent:
        return cls(job_id=self.ref.job_id, attempt=self.ref.attempt, agent_id=self.cfg.agent_id, **fields)
