"""The agent's fork server: starts every job process, cheaply, and guarantees none outlives the agent.

Run as `python -I -S launcher.py FD` (standard library only), where FD is one end of a SOCK_SEQPACKET
socket pair whose other end the agent holds. Starting a Python interpreter per job would cost about 15 ms
of CPU; forking this small, already-running process costs well under one.

Protocol (one JSON object per packet):
  agent -> launcher   {"id": N, "argv": [...], "cwd": "...", "env": {...}}  with two fds: stdout, stderr
  launcher -> agent   {"id": N, "pid": P}  or  {"id": N, "error": "..."}
  launcher -> agent   {"exited": P, "status": S}   (S as os.waitstatus_to_exitcode: -N for signal N)

Each job gets a guard ("shim"): a forked child that leads a new session and process group, runs the command
in that group, and exits with the command's status (re-raising its signal). The launcher dies with the agent
(parent-death signal SIGKILL); each guard dies with the launcher (parent-death signal SIGUSR2), and on that
signal kills its whole group: a job never outlives its agent, so the controller can run it again elsewhere
without two copies running. SIGTERM to the group is the job's "checkpoint now" signal: the guard ignores it.
"""

import ctypes
import json
import os
import select
import signal
import socket
import sys

PR_SET_PDEATHSIG = 1
MAX_PACKET = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(sig, parent):
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return os.getppid() == parent  # False: the parent died before prctl took effect


def _kill_group(signum=None, frame=None):
    os.killpg(0, signal.SIGKILL)


def _guard(argv, cwd, env, out, err, launcher):
    """In the forked child: lead a new group, run argv in it, exit as it exits. Never returns."""
    try:
        signal.set_wakeup_fd(-1)
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGUSR2, _kill_group)
        if not _die_with_parent(signal.SIGUSR2, launcher):
            _kill_group()
        signal.signal(signal.SIGTERM, lambda s, f: None)  # handled, not ignored: exec resets it for argv
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGUSR2, signal.SIG_DFL)
            os.dup2(out, 1)
            os.dup2(err, 2)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.closerange(3, 65536)
            try:
                os.chdir(cwd)
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                os.write(2, f"incl: cannot run {argv[0]}: {exc.strerror}\n".encode())
                os._exit(127)
        os.close(out)
        os.close(err)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os._exit(os.waitstatus_to_exitcode(status))
    except BaseException:  # noqa: BLE001 - a guard must never return into the launcher's loop
        os._exit(126)


def _send(sock, message):
    sock.send(json.dumps(message).encode())


def serve(sock):
    me = os.getpid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
        while True:  # reap every guard that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _send(sock, {"exited": pid, "status": os.waitstatus_to_exitcode(status)})
        if sock in ready:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_PACKET, 2)
            except InterruptedError:
                continue
            if not data:  # the agent closed its end
                return
            request = json.loads(data)
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                _send(sock, {"id": request.get("id"), "error": "expected two file descriptors"})
                continue
            pid = os.fork()
            if pid == 0:
                sock.close()
                os.close(wake_r)
                os.close(wake_w)
                _guard(request["argv"], request["cwd"], request["env"], fds[0], fds[1], me)
            for fd in fds:
                os.close(fd)
            _send(sock, {"id": request["id"], "pid": pid})


def main(argv):
    sock = socket.socket(fileno=int(argv[1]))
    if not _die_with_parent(signal.SIGKILL, int(argv[2])):
        sys.exit(1)
    serve(sock)


if __name__ == "__main__":
    main(sys.argv)
