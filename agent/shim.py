"""Guardian of one job's process group, run as `python -I -S shim.py -- CMD...` (standard library only).

The agent starts it as the leader of a new process group. It runs CMD in that group and exits with CMD's
status (re-raising CMD's signal). If the agent dies (even by SIGKILL) the kernel sends this process the
parent-death signal, and it kills the whole group: a job never outlives its agent, so the controller can
run the job again elsewhere without two copies running. SIGTERM to the group is the job's "checkpoint now"
signal: the shim itself ignores it and keeps waiting.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_DIED = signal.SIGUSR2


def _kill_group(signum, frame):
    os.killpg(0, signal.SIGKILL)


def main(argv):
    cmd = argv[argv.index("--") + 1:]
    parent = os.getppid()
    signal.signal(PARENT_DIED, _kill_group)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DIED), 0, 0, 0) != 0:
        print("incl-shim: prctl failed", file=sys.stderr)
    if os.getppid() != parent:  # the agent died before prctl took effect
        _kill_group(None, None)
    signal.signal(signal.SIGTERM, lambda s, f: None)  # handled, not ignored: reset for CMD by exec
    pid = os.fork()
    if pid == 0:
        signal.signal(PARENT_DIED, signal.SIG_DFL)
        try:
            os.execvp(cmd[0], cmd)
        except OSError as exc:
            print(f"incl: cannot run {cmd[0]}: {exc.strerror}", file=sys.stderr)
            os._exit(127)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main(sys.argv)
