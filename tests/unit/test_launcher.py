"""The fork server: jobs start in their own group, report their status, and never outlive the launcher."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from output_sink import Output

from incl.agent.launcher import cgroup_parent
from incl.agent.runtime import Launcher
from incl.proto.messages import Stream


async def test_exit_status_output_and_signals(tmp_path: Path) -> None:
    out: list[tuple[Stream, bytes]] = []

    async def sink(stream: Stream, chunk: bytes) -> None:
        out.append((stream, chunk))

    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"], str(tmp_path),
                                 {"PATH": os.environ["PATH"]}, sink)
        assert await h.wait(5.0) == 3
        assert (Stream.STDOUT, b"hi\n") in out and (Stream.STDERR, b"oops\n") in out
        h = await launcher.start(["/bin/sh", "-c", "kill -9 $$"], str(tmp_path), {}, sink)
        assert await h.wait(5.0) == -signal.SIGKILL
        h = await launcher.start(["/no/such/program"], str(tmp_path), {}, sink)
        assert await h.wait(5.0) == 127
        # Many at once: every exit reaches its own handle, even when it arrives before start() returns.
        handles = await asyncio.gather(*[launcher.start(["/bin/sh", "-c", f"exit {i}"], str(tmp_path), {}, sink)
                                         for i in range(40)])
        assert await asyncio.gather(*[h.wait(5.0) for h in handles]) == list(range(40))


async def test_jobs_die_with_the_launcher(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    async def sink(stream: Stream, chunk: bytes) -> None:
        pass

    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", f"sleep 300 & echo $! > {pids}; wait"], str(tmp_path), {}, sink)
        while not pids.exists() or not pids.read_text().strip():
            await asyncio.sleep(0.01)
        child = int(pids.read_text())
        launcher._proc.kill()  # as if the agent (and with it the launcher) were killed -9
        assert await asyncio.wait_for(h.wait(5.0), 5) == -signal.SIGKILL
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the job's child outlived the launcher")


def daemons(n: int, pids: Path) -> str:
    """Shell that starts `n` `sleep 1000` in sessions of their own and waits until each has left the group."""
    return f"for i in $(seq {n}); do setsid sleep 1000 & echo $! >> {pids}; done; " + settled(pids)


def settled(pids: Path) -> str:
    """Shell that waits until each pid in `pids` is `sleep` (exec'd, hence past its setsid)."""
    return (f"for p in $(cat {pids}); do until [ \"$(cat /proc/$p/comm 2>/dev/null)\" = sleep ]; do sleep 0.01; "
            "done; done; ")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _cleanup(pids: Path) -> list[int]:
    """The daemons' pids, each SIGKILLed if still alive (so that a failing test leaves nothing behind)."""
    found = [int(p) for p in pids.read_text().split()] if pids.exists() else []
    for pid in found:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    return found


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "subreaper"])
async def test_a_job_is_over_when_its_command_exits(tmp_path: Path, cgroups: bool) -> None:
    """`setsid sleep 1000 & echo started` ends at once; the daemon is killed and named."""
    pids = tmp_path / "pids"
    async with Launcher(cgroups=cgroups) as launcher:
        h = await launcher.start(["/bin/sh", "-c", daemons(1, pids) + "echo started"], str(tmp_path),
                                 {"PATH": os.environ["PATH"]}, Output().sink)
        try:
            assert await asyncio.wait_for(h.wait(5.0), 10) == 0
            [daemon] = [int(p) for p in pids.read_text().split()]
            assert not _alive(daemon)
            assert h.notes == [f"killed 1 leftover process: sleep (pid {daemon})"]
        finally:
            _cleanup(pids)


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "subreaper"])
async def test_a_double_forked_daemon_holding_stdout_is_killed(tmp_path: Path, cgroups: bool) -> None:
    pids = tmp_path / "pids"
    out = Output()
    script = f"(setsid sleep 1000 & echo $! >> {pids}); " + settled(pids) + "echo main done"
    async with Launcher(cgroups=cgroups) as launcher:
        h = await launcher.start(["/bin/sh", "-c", script], str(tmp_path), {"PATH": os.environ["PATH"]}, out.sink)
        try:
            assert await asyncio.wait_for(h.wait(5.0), 10) == 0
            [daemon] = [int(p) for p in pids.read_text().split()]
            assert b"main done" in out.data and not _alive(daemon)
            assert h.notes == [f"killed 1 leftover process: sleep (pid {daemon})"]
        finally:
            _cleanup(pids)


async def test_stop_kills_a_job_that_ignores_sigterm_and_every_process_it_left(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    out = Output()
    script = "trap '' TERM; " + daemons(4, pids) + "echo started; while :; do sleep 0.05; done"
    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", script], str(tmp_path), {"PATH": os.environ["PATH"]}, out.sink)
        try:
            await out.until(b"started")
            await h.stop(grace=0.2)
            assert await asyncio.wait_for(h.wait(5.0), 10) == -signal.SIGKILL
            daemon_pids = _cleanup(pids)
            assert len(daemon_pids) == 4 and not any(_alive(p) for p in daemon_pids)
            assert all(f"sleep (pid {p})" in h.notes[0] for p in daemon_pids), h.notes
        finally:
            _cleanup(pids)


async def test_output_held_open_from_outside_the_job_is_drained_for_a_bounded_time(tmp_path: Path) -> None:
    """A pipe still open after the command exits (here: by the test itself) delays the end by at most the drain."""
    out = Output()
    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", "echo $$; until [ -e go ]; do sleep 0.01; done"], str(tmp_path),
                                 {"PATH": os.environ["PATH"]}, out.sink)
        await out.until(b"\n")
        held = os.open(f"/proc/{int(out.data)}/fd/1", os.O_WRONLY)  # a second writer on the job's stdout
        (tmp_path / "go").touch()
        try:
            assert await asyncio.wait_for(h.wait(0.5), 10) == 0
            assert h.notes == ["output still open 0.5 s after the command ended: stopped reading it"]
        finally:
            os.close(held)


async def test_where_cgroups_can_be_made_each_job_runs_in_its_own_and_it_is_removed(tmp_path: Path) -> None:
    parent = cgroup_parent()
    if parent is None:
        pytest.skip("this host lets the launcher create no cgroup v2 (the subreaper tests cover it)")
    out = Output()
    async with Launcher() as launcher:
        # The guard moves the command into the job's cgroup just after it starts (off its start-up path).
        h = await launcher.start(["/bin/sh", "-c", "sleep 0.5; grep ^0:: /proc/self/cgroup"], str(tmp_path),
                                 {"PATH": os.environ["PATH"]}, out.sink)
        assert await h.wait(5.0) == 0
    job_cgroup = Path(parent) / Path(out.data.decode().strip()[3:]).name
    assert job_cgroup.name.startswith("incl-job-") and not job_cgroup.exists()


async def test_a_job_that_signals_its_own_group_does_not_end_itself_through_its_guard(tmp_path: Path) -> None:
    """SIGUSR1 and SIGUSR2 mean something to the guard only from the agent and the launcher."""
    out = Output()
    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", "trap '' USR1 USR2 TERM; kill -USR1 0; kill -USR2 0; kill -TERM 0; "
                                  "echo alive"], str(tmp_path), {"PATH": os.environ["PATH"]}, out.sink)
        assert await asyncio.wait_for(h.wait(5.0), 10) == 0
        assert out.data == b"alive\n"


async def test_a_lease_that_runs_out_stops_the_jobs_and_tells_the_agent_which(tmp_path: Path) -> None:
    """The fork server enforces the agent's lease by itself: SIGTERM at its end, and the agent learns which
    jobs it stopped (so it reports them fenced, not failed), before their exits."""
    out = Output()
    async with Launcher(cgroups=False) as launcher:
        handle = await launcher.start(["/bin/sh", "-c", "sleep 30"], str(tmp_path), {"PATH": os.environ["PATH"]},
                                      out.sink)
        launcher.renew(0.3, 5.0, None, [], str(tmp_path / "agent.lock"))
        async with asyncio.timeout(10):
            status = await handle.wait(1.0)
        assert status == -signal.SIGTERM
        assert handle.pid in launcher.fenced


async def test_a_job_started_after_the_lease_ran_out_is_stopped_with_the_rest_and_counted_fenced(
        tmp_path: Path) -> None:
    """A start the agent asked for just before it froze, served after the lease ran out: the job is stopped with
    the others and the agent is told it was fenced (not that it failed) before its exit (seen in the chaos test:
    a job reported 'killed by signal 12')."""
    out = Output()
    async with Launcher(cgroups=False) as launcher:
        first = await launcher.start(["/bin/sh", "-c", "sleep 30"], str(tmp_path), {"PATH": os.environ["PATH"]},
                                     out.sink)
        launcher.renew(0.2, 0.3, None, [], str(tmp_path / "agent.lock"))
        await asyncio.sleep(0.35)  # past the lease's end: SIGTERM sent, the kill due 0.3 s later
        late = await launcher.start(["/bin/sh", "-c", "trap '' TERM; sleep 30"], str(tmp_path),
                                    {"PATH": os.environ["PATH"]}, out.sink)
        async with asyncio.timeout(10):
            await first.wait(1.0)
            status = await late.wait(1.0)
        assert late.pid in launcher.fenced and first.pid in launcher.fenced
        assert status != 0


async def test_a_command_starts_with_no_signal_blocked_no_stray_descriptor_and_a_missing_folder_is_a_127(
        tmp_path: Path) -> None:
    """The guard blocks its signals to wait for them; the command it spawns (in C, no Python in the child) must not
    inherit that mask, or it would never see SIGTERM, its "checkpoint now"; nor any descriptor but its three."""
    out = Output()
    async with Launcher() as launcher:
        h = await launcher.start(["grep", "^SigBlk", "/proc/self/status"], str(tmp_path),  # a shell would unblock
                                 {"PATH": os.environ["PATH"]}, out.sink)
        assert await h.wait(5.0) == 0
        assert out.data.decode().split() == ["SigBlk:", "0" * 16]
        fds = Output()  # nothing of the launcher's or the guard's is left open in it (3: ls's own, of the folder)
        h = await launcher.start(["ls", "/proc/self/fd"], str(tmp_path), {"PATH": os.environ["PATH"]}, fds.sink)
        assert await h.wait(5.0) == 0
        assert fds.data.split() == [b"0", b"1", b"2", b"3"]
        err = Output()
        h = await launcher.start(["/bin/true"], str(tmp_path / "gone"), {}, err.sink)
        assert await h.wait(5.0) == 127
        assert err.data.startswith(b"incl: cannot run /bin/true: No such file or directory")


async def test_an_environment_value_that_is_not_utf8_reaches_the_command_byte_for_byte(tmp_path: Path) -> None:
    """os.environ keeps undecodable bytes as surrogates; the request to the fork server still carries them."""
    out = Output()
    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", 'printf %s "$ODD"'], str(tmp_path),
                                 {"PATH": os.environ["PATH"], "ODD": b"a\xffb".decode(errors="surrogateescape")},
                                 out.sink)
        assert await h.wait(5.0) == 0
        assert out.data == b"a\xffb"
