"""The bus over TLS on loopback, with a throwaway CA: a stack runs a job end to end through a server that requires
TLS; a client that trusts another CA, or speaks no TLS, is refused at connect with one clear line."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from authstack import AuthNats, make_identities
from conftest import Cluster, NatsServer, free_port, pid_alive, wait_for

from incl.auth import tls
from incl.bus.connection import TlsFailed, connect
from incl.cli import stack
from incl.proto.messages import JobState
from incl.proto.spec import load_spec


class TlsNats(AuthNats):
    """The server as `incl up --tls` configures it: INCL's identities, and TLS required of every client."""

    def __init__(self, home: Path, tmp: Path) -> None:
        stack.choose_tls(home, tls=True)
        super().__init__(home, tmp)
        self.url = f"tls://127.0.0.1:{self.port}"
        self.ca = tls.tls_dir(home) / "ca.pem"


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[TlsNats]:
    home = tmp_path / "home"
    make_identities(home)
    server = TlsNats(home, tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    return tls.ensure(tmp_path / "elsewhere").ca


async def dial(url: str, ca: Path | None, creds: Path | None = None) -> None:
    bus = await connect(url, "test", connect_timeout=2, reconnect_wait=0.1, request_timeout=5,
                        max_reconnect_attempts=0, quiet=True, creds=creds, tls_ca=ca)
    await bus.close()


@pytest.fixture
async def tls_cluster(tls_nats: TlsNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("INCL_HOME", str(tls_nats.home))
    monkeypatch.setenv("INCL_CREDS", str(tls_nats.creds("user", "alice")))
    monkeypatch.setenv("INCL_TLS_CA", str(tls_nats.ca))
    cluster = Cluster(tmp_path, tls_nats)  # type: ignore[arg-type]  # a TlsNats serves as its NatsServer
    yield cluster
    cluster.close()


async def test_a_stack_over_tls_runs_a_job_end_to_end(tls_cluster: Cluster, tls_nats: TlsNats) -> None:
    tls_cluster.start_controller(creds=str(tls_nats.creds("controller", "controller")), tls_ca=str(tls_nats.ca))
    tls_cluster.start_agent("a1", creds=str(tls_nats.creds("agent", "a1")), tls_ca=str(tls_nats.ca))
    await tls_cluster.wait_agents(1)
    async with tls_cluster.client() as alice:
        job = await alice.submit(load_spec({"run": "echo hi over TLS from $INCL_JOB_ID"}))
    done = await tls_cluster.wait_done(job.id)
    assert done.state is JobState.SUCCEEDED, tls_cluster.dump()
    shown = tls_cluster.cli("logs", job.id)  # the CLI, as a user runs it: the CA from $INCL_TLS_CA
    assert shown.returncode == 0 and f"hi over TLS from {job.id}" in shown.stdout, shown.stdout + shown.stderr


async def test_a_client_that_trusts_another_ca_is_refused_with_one_clear_line(tls_cluster: Cluster, tls_nats: TlsNats,
                                                                               other_ca: Path) -> None:
    with pytest.raises(TlsFailed) as refused:
        await dial(tls_nats.url, other_ca, tls_nats.creds("user", "alice"))
    assert str(refused.value) == (f"TLS: the server's certificate at {tls_nats.url} is not signed by the CA in "
                                  f"{other_ca} (certificate verify failed: unable to get local issuer certificate)")
    out = tls_cluster.cli("ls", env={"INCL_TLS_CA": str(other_ca)})  # the CLI: that line, and no traceback
    assert out.returncode == 1 and out.stderr.strip().endswith(str(refused.value)), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    # A daemon ends at once (retrying cannot help) and logs why, without its credentials.
    agent = tls_cluster.start_agent("a1", creds=str(tls_nats.creds("agent", "a1")), tls_ca=str(other_ca))
    assert agent.proc is not None
    await wait_for(lambda: agent.proc is not None and agent.proc.poll() is not None, 20, "the agent to exit")
    assert agent.proc.returncode == 1
    assert "daemon_refused" in agent.output() and str(refused.value) in agent.output(), agent.output()
    seed = tls_nats.creds("agent", "a1").read_text().split()[-1]
    assert seed not in agent.output() and "Traceback" not in agent.output()


async def test_a_client_without_the_ca_or_without_tls_is_refused(tls_nats: TlsNats) -> None:
    """Without the CA the system's do not know the certificate; a client that speaks no TLS gets no further than the
    server's greeting (it says TLS is required) and never reaches the point of presenting credentials."""
    with pytest.raises(TlsFailed, match=r"is not signed by a CA this client trusts \(no CA file given"):
        await dial(tls_nats.url, None)
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_nats.port)
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), 5)).split(b" ", 1)[1])
        assert info["tls_required"] is True
        writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()
    assert b"PONG" not in answer  # closed with an error, never served


async def test_a_tls_url_refuses_a_server_that_does_not_speak_tls(nats_server: NatsServer, tmp_path: Path) -> None:
    url = nats_server.url.replace("nats://", "tls://")
    with pytest.raises(TlsFailed, match="does not speak TLS, but the URL asks for it"):
        await dial(url, tls.ensure(tmp_path).ca)


def incl(home: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INCL_")} | {"INCL_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "incl.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


async def test_incl_up_tls_hands_out_a_tls_url_and_a_later_up_keeps_it(tmp_path: Path) -> None:
    """`incl up --tls`: the daemons and the CLI use TLS with the CA it made; after `incl down`, a plain `incl up`
    on the same home starts TLS again. Listening beyond loopback needs TLS."""
    bare = incl(tmp_path / "bare", "up", "--listen", "0.0.0.0", "--web-port", "0")
    assert bare.returncode == 1 and "listening on 0.0.0.0 lets other hosts connect: that needs TLS" in bare.stderr
    home = tmp_path / "home"
    port = free_port()
    pids: list[int] = []
    try:
        for flags in (["--tls", "--listen", "0.0.0.0"], []):
            up = incl(home, "up", "--agents", "1", "--port", str(port), "--web-port", "0", *flags)
            assert up.returncode == 0, up.stdout + up.stderr
            assert f"tls://127.0.0.1:{port}" in up.stdout
            state = json.loads((home / "stack.json").read_text())
            pids += [p["pid"] for p in state["procs"]]
            assert state["listen"] == ("0.0.0.0" if flags else "127.0.0.1")
            assert state["tls_ca"] == str(home / "tls" / "ca.pem")
            listed = incl(home, "agents", "--json")
            assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1, listed.stderr
            assert listed.stderr == ""  # not even asyncio's note on each TLS stream's end
            assert incl(home, "down").returncode == 0
        assert 'tls: {"cert_file"' in (home / "auth" / "nats.conf").read_text()
    finally:
        incl(home, "down")
    await wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=15, what="every started process gone")
