#!/usr/bin/env python3
"""What the auth callout adds to a connect (issue 15): an agent connecting with its static nkey vs with its instance
identity document, which the server sends to a controller's callout service to decide.

    .venv/bin/python bench/callout_connect.py                  # 5 rounds of 40 connects of each kind
    .venv/bin/python bench/callout_connect.py --rounds 7 --connects 60

One nats-server rendered by INCL with the callout on (`auth/serverconf.py`), and the callout served by a separate
process (`--serve`, as a controller would: its own connection, its own event loop), whose provider describe is a
stub answering at once (the EC2 describe is cached: `callout.records_ttl`). The document is signed with a
throwaway RSA-2048 key whose certificate stands for AWS's. Each connect is `connect()` until the server accepted
it, then `close()`; the kinds alternate round by round (nkey first in even rounds, token first in odd ones).
Reported: per kind, the median of the rounds' medians and its p90, the ratio token / nkey, the load average.
Results on stdout, and bench/results/callout_connect.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from stats import median, percentile

from incl.auth import callout, identities, instancedoc, serverconf
from incl.bus.connection import connect
from incl.proto import subjects

NATS_SERVER = Path(sys.executable).parent / "nats-server"
INSTANCE = "i-0bench"


@dataclass
class Observed:
    instance_id: str
    state: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(home: Path, url: str, cert: str) -> None:
    """The controller's side: the callout over a stub describe, until killed."""
    async def describe() -> list[Observed]:
        return [Observed(INSTANCE, "running")]

    cfg = callout.CalloutConfig(enabled=True, aws_certificates=[cert])
    service = callout.open_callout(cfg, callout.issuer_file(home), describe)
    bus = await connect(url, "bench-controller", connect_timeout=2, reconnect_wait=0.1, request_timeout=2,
                        creds=identities.creds_file(home, "controller", "controller"))
    print("serving", flush=True)
    await callout.serve(bus, service)


async def one(url: str, **how: object) -> float:
    started = time.perf_counter()
    bus = await connect(url, "bench", connect_timeout=5, reconnect_wait=0.1, request_timeout=5,
                        max_reconnect_attempts=0, quiet=True, **how)  # type: ignore[arg-type]
    took = time.perf_counter() - started
    await bus.close()
    return took


async def measure(args: argparse.Namespace) -> dict[str, object]:
    from calloutstack import certificate, signing_key  # tests/: the throwaway "AWS" key and certificate

    tmp = Path(tempfile.mkdtemp(prefix="callout-bench-"))
    home = tmp / "home"
    identities.add(home, "controller", "controller")
    identities.add(home, "agent", "a1")
    issuer = callout.ensure_issuer(callout.issuer_file(home))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    conf = serverconf.write(tmp / "nats.conf", identities.load(home), host="127.0.0.1", port=port,
                            store_dir=tmp / "js", callout_issuer=issuer)
    key = signing_key()
    cert = certificate(key, tmp, "aws")
    document = json.dumps({"instanceId": INSTANCE, "accountId": "123456789012", "region": "us-east-1"})
    signature = base64.b64encode(key.sign(document.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
    token = instancedoc.token(document, signature)
    nats = subprocess.Popen([str(NATS_SERVER), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            await asyncio.sleep(0.02)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(home), url, str(cert)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy())
        assert server.stdout is not None
        assert server.stdout.readline().strip() == b"serving"
        await asyncio.sleep(0.3)
        kinds = {
            "nkey": {"creds": identities.creds_file(home, "agent", "a1")},
            "token": {"token": token, "inbox_prefix": subjects.agent_inbox(INSTANCE)},
        }
        rounds: dict[str, list[float]] = {k: [] for k in kinds}
        p90s: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            order = list(kinds) if r % 2 == 0 else list(reversed(kinds))
            for kind in order:
                times = [await one(url, **kinds[kind]) for _ in range(args.connects)]
                rounds[kind].append(median(times) * 1000)
                p90s[kind].append(percentile(times, 90) * 1000)
                print(f"round {r + 1} {kind:5}: median {rounds[kind][-1]:.2f} ms, p90 {p90s[kind][-1]:.2f} ms",
                      flush=True)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        nats.kill()
        nats.wait()
    result = {
        "rounds": args.rounds, "connects_per_round": args.connects, "load_average": os.getloadavg(),
        "median_ms": {k: round(median(v), 3) for k, v in rounds.items()},
        "p90_ms": {k: round(median(v), 3) for k, v in p90s.items()},
        "round_medians_ms": {k: [round(x, 3) for x in v] for k, v in rounds.items()},
    }
    result["ratio_token_over_nkey"] = round(median(rounds["token"]) / median(rounds["nkey"]), 2)
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(serve(Path(sys.argv[2]), sys.argv[3], sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connects", type=int, default=40)
    result = asyncio.run(measure(parser.parse_args()))
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "callout_connect.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
