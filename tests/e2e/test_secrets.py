"""A job that prints a secret's value: the value appears nowhere a user can read the job's output."""

from __future__ import annotations

from conftest import Cluster

from incl.proto.messages import JobState

SECRET = "tok-5f3a9c1e"


async def test_a_printed_secret_is_redacted_in_logs_tail_and_cli(cluster: Cluster) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    job = await cluster.submit('echo "key is $API_KEY"; echo "$API_KEY" >&2; exit 3', secrets={"API_KEY": SECRET})
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.FAILED
    assert await cluster.log_lines(job.id) == [b"key is <secret:API_KEY>", b"<secret:API_KEY>"] or \
        sorted(await cluster.log_lines(job.id)) == [b"<secret:API_KEY>", b"key is <secret:API_KEY>"]
    assert "key is <secret:API_KEY>" in done.current.tail
    for args in (["logs", job.id], ["show", job.id], ["show", job.id, "--json"]):
        out = cluster.cli(*args)
        assert out.returncode == 0, out.stderr
        assert SECRET not in out.stdout + out.stderr and "<secret:API_KEY>" in out.stdout, (args, out.stdout)
