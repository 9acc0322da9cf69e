"""A real Docker engine for tests: our own dockerd (own socket, data root, exec root), and test images.

No registry is reachable from tests, so images are made with `docker import` from a root filesystem tar:
busybox from Debian's busybox-static, and a debootstrapped Debian with python3 (built once, then cached
outside the repository under ~/.cache/incl-tests).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

DOCKERD = "/usr/sbin/dockerd"
DOCKER_CLI = shutil.which("docker") or "/usr/local/bin/docker"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static: runs in an image without a libc
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

BUSYBOX_IMAGE = "incl-test/busybox:1"
PYTHON_IMAGE = "incl-test/python:1"
ROOTFS_BUILD_TIMEOUT = 600.0  # its own limit: it is built before the tests, outside their per-test timeout
# Bump to rebuild the cached rootfs (a changed package list, suite or mirror).
PYTHON_ROOTFS_VERSION = "bookworm-minbase-python3-1"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "incl-tests"


class Dockerd:
    """One dockerd with everything under `root`; `stop()` removes its containers, its mounts and `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock = root / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.log_path = root / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds: float | None = None  # how long it took to answer, for the report

    def start(self) -> Dockerd:
        argv = [DOCKERD, "--host", self.url, "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "dockerd.pid"),
                "--bridge=none", "--iptables=false", "--ip6tables=false"]
        self.root.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        while time.monotonic() - began < START_TIMEOUT:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited with {self.proc.returncode}:\n{self.output()}")
            if self.sock.exists() and self.cli("version", check=False, timeout=5).returncode == 0:
                self.start_seconds = time.monotonic() - began
                return self
            time.sleep(0.05)
        raise RuntimeError(f"dockerd did not answer within {START_TIMEOUT:g} s:\n{self.output()}")

    def cli(self, *args: str, input: bytes | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI pointed at this engine."""
        result = subprocess.run([DOCKER_CLI, "--host", self.url, *args], input=input, capture_output=True,
                                timeout=timeout, env={**os.environ, "DOCKER_CONFIG": str(self.root / "cli")})
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired, RuntimeError):
                ids = self.cli("ps", "-aq", timeout=STOP_TIMEOUT).stdout.split()
                if ids:
                    self.cli("rm", "-f", *(i.decode() for i in ids), check=False, timeout=STOP_TIMEOUT)
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: dockerd and the containerd it started
                self.proc.wait()
        _unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


def _unmount_under(root: Path) -> None:
    """Lazily unmount whatever a killed engine left mounted under `root` (overlays, shm), deepest first."""
    prefix = str(root.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # mountinfo writes a space as \040
        if point.startswith(prefix):
            points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def start_dockerd(tmp_root: Path) -> Dockerd:
    """A running engine under `tmp_root`; skips the test when there is none to start, except in CI."""
    reason = None
    if not os.access(DOCKERD, os.X_OK):
        reason = f"{DOCKERD} is not installed (Debian's docker.io)"
    elif os.geteuid() != 0:
        reason = "dockerd needs root"
    else:
        engine = Dockerd(tmp_root)
        try:
            return engine.start()
        except (OSError, RuntimeError) as exc:
            engine.stop()
            reason = f"dockerd did not start: {exc}"
    if os.environ.get("CI") == "true":
        raise RuntimeError(reason)
    pytest.skip(reason)


def _has_image(docker: Dockerd, name: str) -> bool:
    return docker.cli("image", "inspect", name, check=False).returncode == 0


def busybox_rootfs(padding: int = 0) -> bytes:
    """A root filesystem tar: a static busybox with its applet links (and `/padding`, that many random bytes)."""
    applets = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, check=True, text=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "sbin", "usr/bin", "usr/sbin", "tmp", "etc", "proc", "sys", "dev", "root"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        if padding:
            info = tarfile.TarInfo("padding")
            info.size = padding
            tar.addfile(info, io.BytesIO(os.urandom(padding)))
        for applet in applets:
            if applet != "bin/busybox":
                link = tarfile.TarInfo(applet)
                link.type, link.linkname = tarfile.SYMTYPE, "/bin/busybox"
                tar.addfile(link)
    return buf.getvalue()


def busybox_image(docker: Dockerd) -> str:
    """`incl-test/busybox:1`, imported from `busybox_rootfs()`."""
    if not _has_image(docker, BUSYBOX_IMAGE):
        docker.cli("import", "-", BUSYBOX_IMAGE, input=busybox_rootfs())
    return BUSYBOX_IMAGE


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest process may be building the same rootfs
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def can_build_python_rootfs() -> bool:
    return os.geteuid() == 0 and shutil.which("debootstrap") is not None


def python_rootfs_path() -> Path:
    return cache_dir() / f"debian-python3-{PYTHON_ROOTFS_VERSION}.tar"


def python_rootfs(timeout: float = ROOTFS_BUILD_TIMEOUT, mirror: str = DEBIAN_MIRROR,
                  cancelled: threading.Event | None = None) -> Path:
    """The debootstrapped Debian-with-python3 rootfs tar, built on first use (one to five minutes: it downloads
    about 40 MB of packages and unpacks them) and then cached. conftest starts it in the background before the
    first test (`BackgroundRootfs`), outside any test's timeout. A build that fails, times out, is cancelled or
    interrupted leaves nothing behind, and what a build killed outright left is cleared away by the next one."""
    tar_path = python_rootfs_path()
    with _locked(tar_path.with_suffix(".lock")):
        if tar_path.exists():
            return tar_path
        _remove_leftovers(tar_path.parent)  # we hold the lock: no other build is under way
        build = Path(tempfile.mkdtemp(prefix="rootfs-", dir=tar_path.parent))
        partial = tar_path.with_suffix(".partial")
        deadline = time.monotonic() + timeout
        try:
            _run_group(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(build), mirror],
                       deadline, cancelled)
            for debs in (build / "var/cache/apt/archives").glob("*.deb"):
                debs.unlink()
            _run_group(["tar", "-C", str(build), "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./dev/*",
                        "-cf", str(partial), "."], deadline, cancelled)
            partial.rename(tar_path)
        finally:
            partial.unlink(missing_ok=True)
            _remove_build(build)
    return tar_path


def _run_group(argv: list[str], deadline: float, cancelled: threading.Event | None = None) -> None:
    """Run `argv` in a session of its own; on failure, timeout, cancellation or interruption kill the whole
    session (what debootstrap starts, dpkg in the chroot, must not go on writing into a folder being removed)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            try:
                out, _ = proc.communicate(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:  # retrying loses no output
                if time.monotonic() >= deadline:
                    raise
                if cancelled is not None and cancelled.is_set():
                    raise RuntimeError(f"{argv[0]} cancelled") from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left running
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {out.decode(errors='replace')[-3000:]}")


class BackgroundRootfs:
    """`python_rootfs()` in a thread, started before the tests so that the build overlaps the tests that do not
    need it. `result()` waits for it; `cancel()` ends it (its clean-up runs: nothing is left behind)."""

    def __init__(self, timeout: float = ROOTFS_BUILD_TIMEOUT) -> None:
        self.timeout = timeout
        self.seconds: float | None = None  # how long the build took, once done
        self._path: Path | None = None
        self._error: BaseException | None = None
        self._done, self._cancelled = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._build, name="python-rootfs", daemon=True)

    def start(self) -> BackgroundRootfs:
        self._thread.start()
        return self

    def _build(self) -> None:
        began = time.monotonic()
        try:
            self._path = python_rootfs(self.timeout, cancelled=self._cancelled)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits in result()
            self._error = exc
        finally:
            self.seconds = time.monotonic() - began
            self._done.set()

    def result(self) -> Path:
        if not self._done.wait(self.timeout + 60):
            raise RuntimeError(f"the python rootfs was not built within {self.timeout:g} s")
        if self._error is not None:
            raise RuntimeError(f"building the python rootfs failed: {self._error!r}") from self._error
        assert self._path is not None
        return self._path

    def cancel(self) -> None:
        self._cancelled.set()
        self._thread.join(30)


def _kill_builders(build: Path) -> None:
    """SIGKILL what still builds into `build` (a debootstrap whose pytest was killed outright runs on, orphaned):
    each process naming it, and the whole group of one that leads its own (as `_run_group` starts them, so dpkg
    and the rest go too). Called with the build lock held, so no live build is touched."""
    needle = str(build).encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if needle in (entry / "cmdline").read_bytes() + b"\0":
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _remove_build(build: Path) -> None:
    _unmount_under(build)  # debootstrap mounts /proc and /sys in the target
    shutil.rmtree(build, ignore_errors=True)


def _remove_leftovers(cache: Path) -> None:
    for leftover in cache.glob("rootfs-*"):
        _kill_builders(leftover)
        _remove_build(leftover)
    for partial in cache.glob("*.partial"):
        partial.unlink(missing_ok=True)


def python_image(docker: Dockerd, rootfs: Path | None = None) -> str:
    """`incl-test/python:1`: Debian bookworm (minbase) with python3, from the cached rootfs tar."""
    if not _has_image(docker, PYTHON_IMAGE):
        docker.cli("import", str(rootfs or python_rootfs()), PYTHON_IMAGE, timeout=600)
    return PYTHON_IMAGE


MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """A pull-only Docker registry (API v2) on 127.0.0.1 serving one image behind HTTP basic auth; the engine
    pulls from it over plain http, as Docker trusts 127.0.0.0/8. `async with Registry(...) as r: r.image`."""

    def __init__(self, rootfs: bytes, *, username: str, password: str, repository: str = "incl-test/pulled",
                 tag: str = "1") -> None:
        layer = gzip.compress(rootfs, compresslevel=1)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                             "rootfs": {"type": "layers", "diff_ids": [_digest(rootfs)]}}).encode()
        self.blobs = {_digest(layer): layer, _digest(config): config}
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": _digest(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                        "digest": _digest(layer)}]}).encode()
        self.repository, self.tag = repository, tag
        self.layer_bytes = len(layer)
        self._expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.refused = 0  # requests turned away for want of the right credentials
        self._runner: web.AppRunner | None = None
        self.image = ""

    async def __aenter__(self) -> Registry:
        app = web.Application()
        app.router.add_route("*", "/v2/{path:.*}", self._serve)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.image = f"127.0.0.1:{port}/{self.repository}:{self.tag}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        headers = {"Docker-Distribution-API-Version": "registry/2.0"}
        if request.headers.get("Authorization") != self._expected:
            self.refused += 1
            return web.Response(status=401, headers={**headers, "WWW-Authenticate": 'Basic realm="incl-test"'})
        path = request.match_info["path"]
        manifest_digest = _digest(self.manifest)
        if path == "":
            return web.Response(headers=headers)
        if path in (f"{self.repository}/manifests/{self.tag}", f"{self.repository}/manifests/{manifest_digest}"):
            return web.Response(body=self.manifest, headers={**headers, "Content-Type": MANIFEST_TYPE,
                                                             "Docker-Content-Digest": manifest_digest})
        blob = self.blobs.get(path.rsplit("/", 1)[-1]) if path.startswith(f"{self.repository}/blobs/") else None
        if blob is None:
            return web.Response(status=404, headers=headers)
        return web.Response(body=blob, headers={**headers, "Content-Type": "application/octet-stream",
                                                "Docker-Content-Digest": _digest(blob)})
