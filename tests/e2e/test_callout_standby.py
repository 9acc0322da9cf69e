"""Every controller serves the auth callout, not only the leader: with the leader killed (-9) and the other still
standing by (its lease not yet expired), an instance's connect is still decided, by the standby."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest
import yaml
from authstack import make_identities
from calloutstack import CalloutNats, certificate, signing_key
from conftest import CONTROLLER_CFG, Daemon, wait_for
from imds import FakeImds, Instance

from incl.agent.metadata import MetadataConfig, connect_token
from incl.auth import callout, identities
from incl.bus.connection import AuthFailed, connect

pytestmark = pytest.mark.slow


def start(nats: CalloutNats, tmp: Path, controller_id: str, cert: Path) -> Daemon:
    cfg = {**CONTROLLER_CFG, "controller_id": controller_id, "nats_url": nats.url, "metrics_port": None,
           "store_url": f"file://{tmp / 'store'}", "creds": str(nats.creds("controller", "controller")),
           "identities_file": str(identities.registry_file(nats.home)),
           "leader_ttl": 60.0, "leader_renew": 1.0,  # the standby stays a standby for the whole test
           "callout": {"enabled": True, "aws_certificates": [str(cert)],
                       "issuer_seed": str(callout.issuer_file(nats.home))}}
    path = tmp / f"controller-{controller_id}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Daemon(controller_id, [sys.executable, "-m", "incl.controller", "--config", str(path)],
                  tmp / f"controller-{controller_id}.log").start()


async def test_a_standby_decides_connects_once_the_leader_is_gone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    make_identities(home)
    # a standby on a loaded host decides in time (the default is 1 s)
    nats = CalloutNats(home, tmp_path, auth_timeout=5.0).start()
    aws = signing_key()
    cert = certificate(aws, tmp_path, "aws")
    leader = standby = None
    try:
        leader = start(nats, tmp_path, "one", cert)
        await wait_for(lambda: "leader_elected" in leader.output(), 20, "a leader")
        standby = start(nats, tmp_path, "two", cert)
        await wait_for(lambda: "standing_by" in standby.output() and "callout_serving" in standby.output(), 20,
                       "the standby to serve the callout")
        leader.kill()
        async with FakeImds(signer=aws) as imds:
            endpoint = await imds.add(Instance(instance_id="i-0abc"))
            token = await connect_token(msgspec.structs.replace(MetadataConfig(), endpoint=endpoint), "i-0abc")
        with pytest.raises(AuthFailed):  # decided: the local provider launched nothing
            await connect(nats.url, "agent", connect_timeout=8, reconnect_wait=0.1, request_timeout=3,
                          max_reconnect_attempts=0, quiet=True, token=token)
        assert "instance i-0abc was not launched by this cluster" in standby.output()
        assert "leader_elected" not in standby.output()  # it answered as a standby
        await wait_for(lambda: "Auth callout service returned an error: instance i-0abc was not launched"
                       in nats.output(), 5, "the server to log the standby's refusal")
    finally:
        for daemon in (leader, standby, nats):
            if daemon is not None:
                daemon.kill()
