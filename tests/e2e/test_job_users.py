"""Process jobs of an agent that runs as root each run as a user of their own: never root, and two jobs on one
agent cannot read each other's environment (`/proc/<pid>/environ`) or files (issue 15)."""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Cluster, NatsServer, wait_for

from incl.agent.jobuser import reachable
from incl.proto.messages import JobState

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only an agent running as root starts jobs as other users")
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


@pytest.fixture
def open_work_dir() -> Iterator[Path]:
    """A work_dir other users may pass through (pytest's own folders are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="incl-jobusers-", dir="/tmp"))
    path.chmod(0o755)
    assert reachable(path) is None
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_two_users_jobs_on_one_agent_cannot_read_each_others_environment_or_files(
        nats_server: NatsServer, tmp_path: Path, open_work_dir: Path) -> None:
    cluster = Cluster(tmp_path, nats_server)
    try:
        cluster.start_controller()
        cluster.start_agent("a1", work_dir=str(open_work_dir / "a1"))
        await cluster.wait_agents(1)
        victim = await cluster.submit('echo "uid $(id -u) pid $$"; echo private > "$INCL_OUTPUT_DIR/mine.txt"; '
                                      'exec sleep 60', user="alice", env={"TOKEN": "alice-secret-7731"})
        await cluster.wait_state(victim.id, {JobState.RUNNING})

        async def announced() -> re.Match[bytes] | None:
            return next((m for line in await cluster.log_lines(victim.id)
                         if (m := re.match(rb"uid (\d+) pid (\d+)", line))), None)

        found = await wait_for(announced, 20, "the first job to say its uid and pid")
        victim_uid, pid = int(found.group(1)), int(found.group(2))
        attempt_dir = open_work_dir / "a1" / "jobs" / victim.id / "attempt-1"
        assert victim_uid >= 1_000_000
        assert attempt_dir.stat().st_uid == victim_uid and attempt_dir.stat().st_mode & 0o777 == 0o700
        attacker = await cluster.submit(
            f'id -u; cat /proc/{pid}/environ && echo READ-ENV; cat "{attempt_dir}/outputs/mine.txt" && echo READ-FILE;'
            f' ls "{attempt_dir}" && echo LISTED; echo probe > "{attempt_dir}/outputs/theirs.txt" && echo WROTE; true',
            user="bob")
        done = await cluster.wait_done(attacker.id)
        assert done.state is JobState.SUCCEEDED, cluster.dump()
        lines = await cluster.log_lines(attacker.id)
        text = b"\n".join(lines)
        attacker_uid = int(lines[0])
        assert attacker_uid >= 1_000_000 and attacker_uid != victim_uid, text
        assert b"alice-secret-7731" not in text and b"private" not in text, text
        for marker in (b"READ-ENV", b"READ-FILE", b"LISTED", b"WROTE"):
            assert marker not in text, text
        assert b"Permission denied" in text, text
        async with cluster.client() as c:
            await c.cancel(victim.id)
        assert (await cluster.wait_done(victim.id)).state is JobState.CANCELLED
        # What a job needs still works as its own user: the SDK's metric socket, its home, tmp and outputs. (With
        # the system's Python: this machine's other interpreters live in root's home, which no other user reaches.)
        sdk = await cluster.submit(f"""{SYSTEM_PYTHON} -c "import incl, os, tempfile
incl.log({{'loss': 0.5}}, step=1)
tempfile.NamedTemporaryFile(); open(os.path.expanduser('~/.cache-probe'), 'w').write('x')
open(os.environ['INCL_OUTPUT_DIR'] + '/out.txt', 'w').write('done')" """, user="carol")
        assert (await cluster.wait_done(sdk.id)).state is JobState.SUCCEEDED, await cluster.log_lines(sdk.id)
        assert [p.values for p in await cluster.metric_points(sdk.id)] == [{"loss": 0.5}]
    finally:
        cluster.close()
