"""The agent's fork server: starts every job process, cheaply, and guarantees none outlives its job.

Run as `python -I -S launcher.py FD AGENT_PID [nocgroup]` (standard library only), where FD is one end of a
SOCK_SEQPACKET socket pair whose other end the agent holds. Starting a Python interpreter per job would cost
about 15 ms of CPU; forking this small, already-running process costs well under one.

Protocol (one JSON object per packet):
  agent -> launcher   {"id": N, "argv": [...], "cwd": "...", "env": {...}, "uid": N|null}  with two fds: stdout,
                      stderr (uid: the command runs as that user and a group of the same number, no other groups)
  launcher -> agent   {"id": N, "pid": P}  or  {"id": N, "error": "..."}
  guard -> agent      {"killed": P, "count": C, "procs": [[pid, name], ...]}   (the first few; before "exited")
  launcher -> agent   {"exited": P, "status": S}   (S as os.waitstatus_to_exitcode: -N for signal N)
  agent -> launcher   {"lease": SECONDS, "grace": G, "docker": SOCKET|null, "containers": [ID, ...], "lock": PATH}
  launcher -> agent   {"fenced": [GUARD PID, ...], "containers": [ID, ...]}   (the lease ran out: these were stopped)

The lease is the agent's fence, held here too: the agent renews it each time the controller answers. Should
it run out (the agent cannot reach the controller, or is frozen and cannot even act: `kill -STOP`), the
launcher sends SIGTERM to every job and stops the agent's containers (Docker Engine API on the socket), then
after G seconds kills them all. So no job runs on once the controller may have handed it to another agent.

Each job gets a guard ("shim"): a forked child that leads a new session and process group, runs the command
in that group, and exits with the command's status (re-raising its signal). A job is over when its command
has exited: the guard then kills every process the job left behind, even those that left the group
(`setsid`, a double-forked daemon), and reports them. It finds them two ways: the guard is a child subreaper,
so every orphan of the job becomes its child, and where the launcher can create cgroups (cgroup v2, writable)
the command runs in a cgroup of its own, killed at once through `cgroup.kill`.

Signals to a guard: SIGTERM to its group is the job's "checkpoint now" signal (the guard ignores it);
SIGUSR1 from the agent kills every process of the job now (the agent's SIGKILL after the grace period).
When the agent is gone (its end of the socket closes: it died, or stopped) the launcher ends every process
job at once, and each guard dies with the launcher (parent-death signal SIGUSR2), killing every process of its
job first: a process job never outlives its agent. Containers do, for a restarted agent to re-adopt them, but
only until the lease ends (below): so the controller can run a job again elsewhere without two copies running.
"""

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MAX_PACKET = 1 << 20
MAX_NAMED = 20  # leftover processes named in a report; the count covers the rest
LINGER_POLL = 0.5  # after the agent is gone: how often to look for a new agent process holding its work dir
DOCKER_TIMEOUT = 5.0  # one Engine API call when the lease runs out
SWEEP_POLL = 0.005  # seconds between rounds of killing a job's leftovers while they die

# A guard takes these with sigwaitinfo, which names the sender; its command starts with them unblocked.
GUARD_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2}

_libc = ctypes.CDLL(None, use_errno=True)
_cgroup = None  # in a guard: the job's cgroup directory, when it has one
_command = None  # in a guard: the command's pid
_killed: dict[int, str] = {}  # in a guard: {pid: name} of the job's other processes it killed


def _die_with_parent(sig, parent):
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == parent  # False: the parent died before prctl took effect


# --- cgroups ----------------------------------------------------------------------------------------------

def cgroup_parent():
    """The launcher's own cgroup v2 directory, if it may create child cgroups there; else None."""
    mount = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    mount = left.split()[4]
                    break
        with open("/proc/self/cgroup") as f:
            path = next((line[3:].strip() for line in f if line.startswith("0::")), None)
    except OSError:
        return None
    if mount is None or path is None:
        return None
    parent = os.path.join(mount, path.lstrip("/"))
    probe = os.path.join(parent, f"incl-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError:
        return None
    return parent


def _make_cgroup(parent):
    if parent is None:
        return None
    path = os.path.join(parent, f"incl-job-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.mkdir(path)
    except OSError:
        return None
    return path


def _move_into_cgroup(path, pid):
    """Move the command into the job's cgroup, from the guard, once the command runs: a cgroup migration takes
    10-25 ms here, which the command's own start-up no longer waits for. What it forks meanwhile stays outside
    the cgroup, and the subreaper still finds it."""
    if path is not None:
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))
        except OSError:
            pass  # it has ended already, or the cgroup refused it: the subreaper still finds all


def _remove_cgroup(path):
    if path is not None:
        with contextlib.suppress(OSError):
            os.rmdir(path)


# --- the job's processes ----------------------------------------------------------------------------------

def _proc_stat(pid):
    """(name, state, parent pid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    name, _, rest = data[data.index(b"(") + 1:].rpartition(b")")
    fields = rest.split()
    return name.decode(errors="replace"), fields[0], int(fields[1])


def _job_processes():
    """{pid: name} of every live process of this guard's job: the cgroup's members and the guard's descendants."""
    me = os.getpid()
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (_, _, ppid) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), [me]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    if _cgroup is not None:
        try:
            with open(os.path.join(_cgroup, "cgroup.procs")) as f:
                found.update(int(line) for line in f if line.strip())
        except OSError:
            pass
    found.discard(me)
    return {pid: stats[pid][0] for pid in sorted(found) if pid in stats and stats[pid][1] != b"Z"}


def _kill_all():
    """SIGKILL to every process of the job (the command included), noting the others; reaped by the caller."""
    processes = _job_processes()
    for pid, name in processes.items():
        if pid != _command:
            _killed.setdefault(pid, name)
    if _cgroup is not None:
        try:
            with open(os.path.join(_cgroup, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:
            pass  # no cgroup.kill before Linux 5.14: one by one below
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _reap():
    """Reap every child that has ended; False once the guard has no children left (hence no descendants)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _sweep():
    """Kill and reap every process the job left; returns {pid: name} of those killed, the command aside."""
    while _reap():  # orphans are the guard's children (subreaper): none left means none anywhere
        _kill_all()
        time.sleep(SWEEP_POLL)
    return _killed


def _die_with_launcher():
    _kill_all()
    _sweep()
    _remove_cgroup(_cgroup)
    os._exit(128 + signal.SIGKILL)


def _wait_for(pid, agent, launcher):
    """The command's wait status, acting on the guard's signals meanwhile (only from whom they are meant to
    come: a job that signals its own group does not end itself by it); orphans are reaped as they end."""
    while True:
        while True:  # first: the command may have ended before its SIGCHLD could be waited for
            try:
                child, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                child = 0
            if child == 0:
                break
            if child == pid:
                return status
        info = signal.sigwaitinfo(GUARD_SIGNALS)
        if info.si_signo == signal.SIGUSR1 and info.si_pid == agent:
            _kill_all()
        elif info.si_signo == signal.SIGUSR2 and info.si_pid == launcher:
            _die_with_launcher()


def _spawn(argv, cwd, env, out, err, uid):
    """Start the command; its pid in `_command`. With posix_spawn (clone-vfork and exec in C: no Python runs in the
    child, whose copy-on-write faults cost more than the rest of a job's start), its signal mask emptied in the
    child, so that the guard's signals stay blocked here without a gap. The guard moves to the job's folder first
    (the child starts there) and resolves argv[0] on the job's PATH, as execvpe does. A job of its own user is
    forked and switches user in Python, which posix_spawn cannot do."""
    global _command  # noqa: PLW0603 - the guard's own state, as in _guard
    if uid is not None:
        _command = _fork_exec(argv, cwd, env, out, err, uid)
        return
    os.chdir(cwd)
    actions = [(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, err, 2), (os.POSIX_SPAWN_CLOSE, out),
               (os.POSIX_SPAWN_CLOSE, err), (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    paths = [argv[0]] if os.sep in argv[0] else [os.path.join(d, argv[0]) for d in os.get_exec_path(env)]
    failed: OSError | None = None
    for path in paths:
        try:
            _command = os.posix_spawn(path, argv, env, file_actions=actions, setsigmask=())
            return
        except (FileNotFoundError, NotADirectoryError) as exc:
            failed = failed if isinstance(failed, PermissionError) else exc
        except PermissionError as exc:  # as execvpe: a later folder may hold one it may run
            failed = exc
    raise failed or FileNotFoundError(2, os.strerror(2), argv[0])


def _fork_exec(argv, cwd, env, out, err, uid):
    pid = os.fork()
    if pid == 0:
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, GUARD_SIGNALS)
            os.dup2(out, 1)
            os.dup2(err, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.closerange(3, 65536)
            os.setgroups([])  # the job's own user: no groups of root's, and no way back
            os.setgid(uid)
            os.setuid(uid)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"incl: cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)
    return pid


def _guard(argv, cwd, env, out, err, agent, launcher, sock, cgroups, uid=None):
    """In the forked child: lead a new group, run argv in it, end the job as it exits. Never returns."""
    global _cgroup  # noqa: PLW0603 - the forked child's signal handlers read it
    try:
        gc.disable()  # a short-lived process: no collection need touch (and copy) the launcher's pages
        signal.set_wakeup_fd(-1)
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_BLOCK, GUARD_SIGNALS)
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if not _die_with_parent(signal.SIGUSR2, launcher):
            _die_with_launcher()
        try:
            _spawn(argv, cwd, env, out, err, uid)
        except OSError as exc:  # the command could not start: like the shell's 127
            os.write(err, f"incl: cannot run {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127)
        pid = _command
        os.close(out)
        os.close(err)
        _cgroup = _make_cgroup(cgroups)
        _move_into_cgroup(_cgroup, pid)
        status = _wait_for(pid, agent, launcher)
        killed = _sweep()
        _remove_cgroup(_cgroup)
        if killed:
            with contextlib.suppress(OSError):  # the agent is gone
                _send(sock, {"killed": os.getpid(), "count": len(killed), "procs": list(killed.items())[:MAX_NAMED]})
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            for other in GUARD_SIGNALS - {signal.SIGCHLD, sig}:
                signal.signal(other, signal.SIG_IGN)  # drops any still pending: the guard dies of `sig` alone
            if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, GUARD_SIGNALS)
            os.kill(os.getpid(), sig)
        os._exit(os.waitstatus_to_exitcode(status))
    except BaseException:  # noqa: BLE001 - a guard must never return into the launcher's loop
        os._exit(126)


def _send(sock, message):
    sock.send(json.dumps(message).encode())


class Lease:
    """The launcher's copy of the agent's lease: when it ends, every job is stopped, then killed."""

    def __init__(self, seconds, grace, docker, containers, lock):
        self.deadline = time.monotonic() + seconds
        self.grace = grace
        self.docker = docker
        self.containers = containers  # the agent's running containers, as of its last renewal
        self.lock = lock  # the agent's work dir lock: held by a new agent process, the containers are its
        self.stage = 0  # 1: SIGTERM sent, 2: killed

    def due(self):
        """Seconds until the next step, or None once both are done."""
        if self.stage >= 2:
            return None
        return max(0.0, self.deadline + (self.grace if self.stage else 0.0) - time.monotonic())

    def step(self, guards, sock=None):
        """SIGTERM (checkpoint now) to every job and container; the second time, kill them all. The agent is
        told first (it may be frozen: it reads this before the exits that follow), so that it reports these
        attempts as fenced, not as failed."""
        self.stage += 1
        if sock is not None and self.stage == 1:
            with contextlib.suppress(OSError):  # the agent is gone
                _send(sock, {"fenced": sorted(guards), "containers": self.containers})
        for guard in guards:
            try:
                if self.stage == 1:
                    os.killpg(guard, signal.SIGTERM)
                else:
                    os.kill(guard, signal.SIGUSR2)  # from the launcher: the guard kills its whole job
            except OSError:
                pass
        for container in self.containers if self.docker else ():
            sig = "SIGTERM" if self.stage == 1 else "SIGKILL"
            _docker(self.docker, "POST", f"/containers/{container}/kill?signal={sig}")


def _lock_held(path):
    """Whether a live process holds the agent's work dir lock (the agent's own check is in agent/workdir.py;
    this file runs on the standard library alone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _outlive_agent(guards, lease):
    """The agent is gone (it died, or stopped). Its process jobs go with it at once. Its containers run on
    for a restarted agent to re-adopt, but only until the lease ends: then they are stopped and killed, unless
    a new agent process holds the work dir by then (it has taken them over)."""
    for guard in guards:
        with contextlib.suppress(OSError):
            os.kill(guard, signal.SIGUSR2)
    for guard in guards:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(guard, 0)
    if lease is None or not lease.docker or not lease.containers:
        return
    with contextlib.suppress(OSError):
        os.setsid()  # on its own now: nothing aimed at the agent's process group or session reaches it
    while (due := lease.due()) is not None:
        if lease.lock and _lock_held(lease.lock):
            return
        time.sleep(min(due, LINGER_POLL))
        if lease.due() == 0.0:
            lease.step(())


def _docker(socket_path, method, path):
    """One Engine API call over the unix socket (stdlib only); the body, or b"" on any failure."""
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(DOCKER_TIMEOUT)
            conn.connect(socket_path)
            conn.sendall(f"{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode())
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        return data.partition(b"\r\n\r\n")[2]
    except OSError:
        return b""


def serve(sock, agent, cgroups):
    gc.freeze()  # a guard's collections leave the launcher's objects alone: fewer copy-on-write faults per job
    me = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    guards = set()
    lease = None
    while True:
        due = lease.due() if lease is not None else None
        ready, _, _ = select.select([sock, wake_r], [], [], due)
        if wake_r in ready:
            os.read(wake_r, 4096)
        if lease is not None and lease.due() == 0.0:
            lease.step(guards, sock)
        while True:  # reap every guard that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            guards.discard(pid)
            _send(sock, {"exited": pid, "status": os.waitstatus_to_exitcode(status)})
        if sock in ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, 2)
            except InterruptedError:
                continue
            if not data:  # the agent closed its end: it stopped, or died
                _outlive_agent(guards, lease)
                return
            request = json.loads(data)
            if "lease" in request:
                for fd in fds:
                    os.close(fd)
                lease = Lease(request["lease"], request["grace"], request.get("docker"),
                              request.get("containers") or [], request.get("lock"))
                continue
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                _send(sock, {"id": request.get("id"), "error": "expected two file descriptors"})
                continue
            # The guard is born with its signals blocked: one sent to it before it blocks them itself (the lease's
            # SIGUSR2) would otherwise kill it by their default action, and its job would seem to have failed.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, GUARD_SIGNALS)
            pid = os.fork()
            if pid == 0:  # the guard keeps the socket for its report on the job's leftovers
                os.close(wake_r)
                os.close(wake_w)
                _guard(request["argv"], request["cwd"], request["env"], fds[0], fds[1], agent, me, sock,
                       cgroups, request.get("uid"))
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            guards.add(pid)
            for fd in fds:
                os.close(fd)
            if lease is not None and lease.stage >= 1:  # started after the lease ran out: stopped with the rest
                _send(sock, {"fenced": [pid], "containers": []})
            _send(sock, {"id": request["id"], "pid": pid})


def main(argv):
    sock = socket.socket(fileno=int(argv[1]))
    sock.set_inheritable(False)  # the agent passed it open across exec; no job's command may hold it
    if os.getppid() != int(argv[2]):  # the agent died before we started
        sys.exit(1)
    serve(sock, int(argv[2]), None if "nocgroup" in argv[3:] else cgroup_parent())


if __name__ == "__main__":
    main(sys.argv)
