"""A job's files on this instance, and their round trips to the artifact store.

Layout under the agent's work dir:

    jobs/<job>/attempt-<n>/assign.msgpack  the assignment, written before anything runs
    jobs/<job>/attempt-<n>/code         the code snapshot, built from the instance's blob cache
    jobs/<job>/attempt-<n>/run          entry scripts (mounted at /incl/run in a container)
    jobs/<job>/attempt-<n>/outputs      $INCL_OUTPUT_DIR, uploaded when the attempt ends
    jobs/<job>/attempt-<n>/checkpoints  $INCL_CHECKPOINT_DIR: restored from the store, synced while it runs
    cache/                              blobs, file hashes and data, shared by every job on the instance, kept
                                        under AgentConfig.cache_max_bytes (artifacts/cachetrim.py): an
                                        attempt pins its code's blobs and its data views in attempt-<n>/pins
    trash/                              removed attempts' folders, deleted by a worker thread

An attempt's folder is removed once its results are in the store: the store, not an instance's disk, is where a
later attempt (on whatever instance) finds them.

In the store, a job's trees live under refs named `jobs/<job>/outputs/<attempt>` and `jobs/<job>/checkpoints`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import threading
import uuid
from pathlib import Path, PurePosixPath

import structlog

import incl
from incl.artifacts import cachetrim, datacache, tree
from incl.artifacts.config import StoreConfig
from incl.artifacts.errors import FileChanged, UnreadableFile
from incl.artifacts.store import ArtifactStore
from incl.proto.messages import TreeRef
from incl.proto.spec import DataMount

log = structlog.get_logger()


def outputs_ref(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/outputs/{attempt}"


def checkpoints_ref(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoints"


def sdk_dir(work_dir: Path) -> Path:
    """A folder holding only the standard-library `incl` SDK, put first on the job's PYTHONPATH."""
    target = work_dir / "sdk" / "incl"
    if not (target / "_sdk.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        src = Path(incl.__file__).parent
        for name in ("__init__.py", "_sdk.py"):
            shutil.copyfile(src / name, target / name)
    return target.parent


class Workspace:
    def __init__(self, work_dir: Path, job_id: str, attempt: int) -> None:
        self.root = work_dir
        self.job_id, self.attempt = job_id, attempt
        self.dir = work_dir / "jobs" / job_id / f"attempt-{attempt}"
        self.code, self.run = self.dir / "code", self.dir / "run"
        self.outputs, self.checkpoints = self.dir / "outputs", self.dir / "checkpoints"
        self.cache = work_dir / "cache"
        # Written before the attempt's command starts: a later agent process that finds it knows this attempt
        # ran here (re-adopts its container, or reports it lost: an attempt never runs twice).
        self.assignment = self.dir / "assign.msgpack"
        # An empty file made with it, which outlives the attempt's folder: a copy of the assignment that reaches a
        # later agent process after the attempt ended here (and its folder went) must not run it again.
        self.ran = work_dir / RAN / f"{job_id}.{attempt}"

    @property
    def started(self) -> bool:
        """This attempt was started on this instance, by this agent process or an earlier one."""
        return self.ran.exists() or self.assignment.exists()

    def write_assignment(self, data: bytes) -> None:
        """assign.msgpack, mode 0600 from its first byte: only the agent's user reads which job ran here, and the
        secrets in it are sealed besides."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.ran.touch()
        except FileNotFoundError:  # the first attempt this work dir has seen
            self.ran.parent.mkdir(exist_ok=True)
            self.ran.touch()
        fd = os.open(self.assignment, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        self.assignment.chmod(0o600)  # a file an older agent left (0644) keeps its mode through O_CREAT

    def create(self) -> Workspace:
        """The folders a process job's command finds when it starts: its working directory (`code`), `outputs` and
        `checkpoints`. `run` is made by whoever writes into it (a container's entry scripts)."""
        for d in (self.code, self.outputs, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)
        if not self.cache.is_dir():
            self.cache.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def sdk(self) -> Path:
        return sdk_dir(self.root)

    def remove(self) -> None:
        """Gone at once (one rename into trash/); the files themselves, and the job's folder once its last attempt
        here is gone, are deleted by the trash thread, since 100,000 unlinks would hold up the event loop, and with
        it the heartbeats, for seconds (and on a busy disk one rmdir takes a millisecond)."""
        trash = self.root / "trash"
        name = f"{self.job_id}-{self.attempt}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.dir, trash / name)
        except FileNotFoundError:
            if not self.dir.exists():
                name = ""
            else:  # no trash/ yet
                trash.mkdir(parents=True, exist_ok=True)
                os.rename(self.dir, trash / name)
        TRASH.put(trash, name, self.dir.parent)


class JobFiles:
    """The attempt's trips to the artifact store: code in, checkpoints both ways, outputs out, data in."""

    def __init__(self, store: ArtifactStore, ws: Workspace, config: StoreConfig,
                 cache_max_bytes: int | None = None) -> None:
        self._store, self._config = store, config
        self._checkpointed = False  # restored or synced once: from then on an empty folder is a change too
        self._ws = ws
        self._max = cache_max_bytes
        self._blobs = tree.BlobCache(ws.cache / "blobs", pin_in=None if self._max is None else ws.dir)
        self._hashes = tree.HashCache(ws.cache / "hashes.sqlite")

    async def fetch_code(self, code: TreeRef) -> tree.PullResult:
        async with cachetrim.sharing(self._ws.cache):  # pins its blobs before it looks (cachetrim.py)
            got = await tree.pull_tree(self._store, code.digest, self._ws.code, blob_cache=self._blobs)
        await self.trim()
        return got

    async def trim(self) -> None:
        """The caches back under their size, if they have one: the least recently used unpinned entries go."""
        if self._max is not None:
            done = await asyncio.to_thread(cachetrim.trim, self._ws.cache, self._ws.root / "jobs", self._max)
            if done.evicted:
                log.info("cache_trimmed", evicted=done.evicted, freed_bytes=done.freed, cache_bytes=done.total)

    async def restore_checkpoints(self) -> tree.PullResult | None:
        """The job's last stored checkpoint into $INCL_CHECKPOINT_DIR; None when there is none (always on a
        first attempt: nothing could have stored one)."""
        ref = checkpoints_ref(self._ws.job_id)
        if self._ws.attempt == 1 or await tree.resolve_ref(self._store, ref) is None:
            return None
        self._checkpointed = True
        async with cachetrim.sharing(self._ws.cache):
            return await tree.pull_tree(self._store, ref, self._ws.checkpoints, blob_cache=self._blobs)

    async def sync_checkpoints(self, attempts: int, retry_delay: float) -> tree.PushResult | None:
        """Upload what changed in $INCL_CHECKPOINT_DIR since the last sync; None while the job has never had a
        checkpoint (most jobs that end quickly: no store round trip for them). A running job may be writing a
        file as it is read: each file is hashed and uploaded from one open file, so one replaced by rename goes up
        as the version that was read, and one that keeps changing in place keeps its previously stored version
        until a later sync (push.py). Never stored half-written; what still fails (a big file rewritten in place
        between its hash and its upload) is taken again."""
        if not self._checkpointed and _empty(self._ws.checkpoints):
            return None
        self._checkpointed = True
        for attempt in range(1, attempts + 1):
            try:
                return await tree.push_tree(self._store, self._ws.checkpoints, ref=checkpoints_ref(self._ws.job_id),
                                            hash_cache=self._hashes, unsettled="keep_previous")
            except (FileChanged, UnreadableFile):
                if attempt == attempts:
                    raise
                await asyncio.sleep(retry_delay)
        raise AssertionError("unreachable")

    async def upload_outputs(self, exclude: list[str]) -> TreeRef | None:
        """$INCL_OUTPUT_DIR into the store; None when the job left nothing there."""
        if _empty(self._ws.outputs):
            return None
        result = await tree.push_tree(self._store, self._ws.outputs, ref=outputs_ref(self._ws.job_id, self._ws.attempt),
                                      hash_cache=self._hashes, exclude=exclude)
        return TreeRef(digest=result.digest, files=result.files, bytes=result.bytes)

    async def fetch_data(self, mount: DataMount) -> Path:
        """The host folder to mount read-only: an s3:// prefix copied into the instance cache, or a host path."""
        if mount.source.startswith("s3://"):
            async with cachetrim.sharing(self._ws.cache):  # no trim between the fetch and the pin
                view = await datacache.fetch_prefix(mount.source, self._ws.cache / "data", config=self._config)
                if self._max is not None:
                    await asyncio.to_thread(_pin_view, self._ws.dir, view)
            await self.trim()
            return view
        path = Path(mount.source)
        if not path.exists():  # noqa: ASYNC240 - one stat of a local path
            raise FileNotFoundError(f"data source {mount.source} does not exist on this instance")
        return path


RAN = "ran"  # under the work dir: one empty file per attempt started here, `<job>.<attempt>`


def prune_ran(work_dir: Path, older_than: float) -> int:
    """Forget attempts started here before `older_than` (a time.time()): by then the controller has long recorded
    how each ended, and no copy of their assignments is still on its way. Returns how many were forgotten."""
    gone = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(work_dir / RAN) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < older_than:
                    os.unlink(entry.path)
                    gone += 1
    return gone


class Trash:
    """One long-lived worker thread that deletes removed folders, woken once per removal (a thread started per
    removal cost the agent a third of its time deleting). `put` never blocks; the thread starts on first use."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Path | None, str, Path | None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._swept: set[Path] = set()  # trash folders emptied of what an agent killed mid-delete left there

    def put(self, trash: Path | None, name: str, then_rmdir: Path | None = None) -> None:
        """Delete `trash/name` (nothing, for ""), then remove `then_rmdir` if it is an empty folder by then."""
        self._queue.put((trash, name, then_rmdir))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="incl-trash", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            trash, name, then_rmdir = self._queue.get()
            try:
                if trash is None:
                    pass
                elif trash not in self._swept:
                    self._swept.add(trash)
                    with contextlib.suppress(FileNotFoundError), os.scandir(trash) as entries:
                        for entry in entries:
                            _delete(entry.path)
                elif name:
                    _delete(str(trash / name))
                if then_rmdir is not None:
                    with contextlib.suppress(OSError):
                        os.rmdir(then_rmdir)
            except Exception:  # the thread must live on; what is left is swept by a later agent
                log.exception("trash_delete_failed", name=name)


TRASH = Trash()


def _delete(path: str) -> None:
    """A folder and everything in it. An attempt's folder mostly holds empty folders and one small file, each
    removed with one call here; anything deeper goes through shutil.rmtree."""
    try:
        entries = list(os.scandir(path))
    except NotADirectoryError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                os.rmdir(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass
        except OSError:  # a folder with files in it
            shutil.rmtree(entry.path, ignore_errors=True)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:  # something was added meanwhile
        shutil.rmtree(path, ignore_errors=True)


def _pin_view(attempt_dir: Path, view: Path) -> None:
    cachetrim.pin(attempt_dir, [view])
    os.utime(view)  # used now: the last to be evicted


def _empty(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def link_data(code: Path, target: str, source: Path) -> None:
    """Without a container: a relative data target becomes a symlink in the code dir."""
    link = code / PurePosixPath(target)
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    os.symlink(source, link)
