"""The embedded server's JetStream store is encrypted at rest with a key `incl up` keeps private under $INCL_HOME."""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
import sys
from pathlib import Path

from incl.auth import identities, serverconf
from incl.bus.connection import connect
from incl.bus.streams import ensure_buckets
from incl.proto import subjects

NATS_SERVER = Path(sys.executable).parent / "nats-server"


def test_a_first_render_makes_a_private_key_and_keeps_it_an_older_home_gets_none(tmp_path: Path) -> None:
    conf = tmp_path / "auth" / "nats.conf"
    serverconf.write(conf, identities.load(tmp_path), host="127.0.0.1", port=4222, store_dir=tmp_path / "nats")
    key_file = tmp_path / "auth" / serverconf.STORE_KEY
    key = key_file.read_text().strip()
    assert len(key) == 64 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "cipher: chachapoly" in conf.read_text() and key in conf.read_text()
    serverconf.write(conf, identities.load(tmp_path), host="127.0.0.1", port=4222, store_dir=tmp_path / "nats")
    assert key_file.read_text().strip() == key  # a re-render (a reload) keeps the key: the server could not change it
    older = tmp_path / "older" / "auth" / "nats.conf"
    older.parent.mkdir(parents=True)
    older.write_text("# rendered before encryption\n")
    serverconf.write(older, identities.load(tmp_path), host="127.0.0.1", port=4222, store_dir=tmp_path / "nats")
    assert "cipher" not in older.read_text() and not (older.parent / serverconf.STORE_KEY).exists()


async def test_the_rendered_server_keeps_no_clear_value_on_disk(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "auth" / "nats.conf"
    serverconf.write(conf, identities.load(tmp_path), host="127.0.0.1", port=port, store_dir=tmp_path / "nats")
    # No identities: the rendered authorization lists nobody; the test connects without it, so drop that block.
    text = conf.read_text().split("authorization:")[0]
    conf.write_text(text)
    server = subprocess.Popen([str(NATS_SERVER), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                bus = await connect(f"nats://127.0.0.1:{port}", "test", connect_timeout=1.0, reconnect_wait=0.1,
                                    request_timeout=5.0, max_reconnect_attempts=0, quiet=True)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                await asyncio.sleep(0.05)
        async with bus:
            await (await ensure_buckets(bus))[subjects.JOBS_BUCKET].put("k", b"CLEAR-VALUE-93ab")
    finally:
        server.terminate()
        server.wait(10)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "nats").rglob("*") if p.is_file())
    assert stored and b"CLEAR-VALUE-93ab" not in stored
