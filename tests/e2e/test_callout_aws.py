"""The auth callout end to end: a controller with the AWS provider (moto) and the callout on, behind a nats-server
rendered with it; the instance it launches boots a real agent (tests/ec2boot.py) that has no credential file and
connects with its signed instance identity document, registers as its own agent id and runs a job."""

from __future__ import annotations

from pathlib import Path

import botocore.session
import pytest
from authstack import make_identities
from calloutstack import CalloutNats, certificate, signing_key
from conftest import Cluster, Daemon, wait_for
from ec2boot import BootSimulator
from imds import FakeImds
from motoserver import MotoServer

from incl.auth import callout, identities
from incl.bus.client import Client
from incl.proto.messages import TERMINAL, Job
from incl.proto.spec import load_spec

pytestmark = pytest.mark.slow

CATALOG = [{"gpus": 0, "cpus": 4, "memory_gib": 16, "instance_types": ["m5.xlarge"]}]


async def test_a_launched_instance_joins_with_its_identity_document_and_runs_a_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    make_identities(home)
    # the controller decides in time on a loaded host (the default is 1 s)
    nats = CalloutNats(home, tmp_path, auth_timeout=5.0).start()
    moto = MotoServer(tmp_path / "moto.log").start()
    cluster = Cluster(tmp_path, nats)  # type: ignore[arg-type]  # it needs only the server's url
    try:
        for key, value in moto.env().items():
            monkeypatch.setenv(key, value)
        cluster.env.update(moto.env())
        aws = signing_key()
        cert = certificate(aws, tmp_path, "aws")

        def start_agent(instance_id: str, endpoint: str) -> Daemon:
            return cluster.start_agent(instance_id, provider="aws", nats_identity="instance",
                                       metadata={"endpoint": endpoint}, docker={"enabled": False})

        async with FakeImds(signer=aws) as imds, BootSimulator(moto.url, imds, start_agent) as sim:
            ec2 = botocore.session.get_session().create_client("ec2", endpoint_url=moto.url, region_name="us-east-1")
            s3 = botocore.session.get_session().create_client("s3", endpoint_url=moto.url, region_name="us-east-1")
            s3.create_bucket(Bucket="incl-store")
            ami = ec2.register_image(Name="incl-gpu", RootDeviceName="/dev/sda1")["ImageId"]
            cluster.start_controller(
                creds=str(nats.creds("controller", "controller")),
                identities_file=str(identities.registry_file(home)), store_url="s3://incl-store/t",
                provider="aws", aws={"endpoint_url": sim.ec2_url, "ami": ami, "catalog": CATALOG,
                                     "api_max_attempts": 1, "launch_backoff_initial": 0.1},
                reconcile={"cluster": "t", "interval": 0.3, "boot_timeout": 20.0, "idle_timeout": 60.0},
                callout={"enabled": True, "aws_certificates": [str(cert)],
                         "issuer_seed": str(callout.issuer_file(home))})
            async with Client(nats.url, creds=nats.creds("user", "alice")) as alice:
                await wait_for(alice.ping, 20, "the controller to answer")
                job = await alice.submit(load_spec({"run": "echo hello from $HOSTNAME"}), user="alice")
                (instance_id,) = await sim.wait_booted(1, timeout=30)

                async def ended() -> Job | None:
                    got = await alice.job(job.id)
                    return got if got.state in TERMINAL else None

                done = await wait_for(ended, 40, "the job to end")
            assert done.state == "SUCCEEDED", (done.reason, cluster.dump())
            assert done.current is not None and done.current.agent_id == instance_id
            assert cluster.controller is not None
            granted = [line for line in cluster.controller.output().splitlines() if "callout_granted" in line]
            assert granted and all(instance_id in line for line in granted), granted
            assert "creds" not in (tmp_path / f"{instance_id}.yaml").read_text()  # no credential file: the document
    finally:
        cluster.close()
        moto.stop()
        nats.kill()
