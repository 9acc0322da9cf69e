"""The EC2 boot simulator: instances launched in moto come up with their own instance metadata and a real process,
lose it when they are terminated, and can be interrupted or reclaimed as EC2 does to spot instances."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from conftest import Cluster, Daemon, wait_for
from ec2boot import BootSimulator
from imds import FakeImds
from motoserver import AWS_ENV, MotoServer

from incl.agent.metadata import Imds, InstanceAction, InstanceIdentity, MetadataConfig
from incl.proto.messages import AgentState

SPOT = {"MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time"}}
CREDENTIALS = {"aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
               "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
               "aws_session_token": AWS_ENV["AWS_SESSION_TOKEN"]}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def ec2_client(url: str) -> Any:
    return get_session().create_client("ec2", region_name="us-east-1", endpoint_url=url, **CREDENTIALS)


class Ec2:
    """Plain EC2 calls against moto, as anything other than the controller would make them."""

    def __init__(self, url: str, client: Any, subnets: list[str], ami: str) -> None:
        self.url, self.client, self.subnets, self.ami = url, client, subnets, ami

    async def run(self, instance_type: str = "g5.xlarge", spot: bool = False, subnet: int = 0) -> str:
        extra = {"InstanceMarketOptions": SPOT} if spot else {}
        reply = await self.client.run_instances(ImageId=self.ami, InstanceType=instance_type, MinCount=1, MaxCount=1,
                                                SubnetId=self.subnets[subnet], **extra)
        return reply["Instances"][0]["InstanceId"]

    async def describe(self, instance_id: str) -> dict[str, Any]:
        return (await self.client.describe_instances(InstanceIds=[instance_id]))["Reservations"][0]["Instances"][0]


@pytest.fixture
async def ec2(moto: MotoServer) -> AsyncIterator[Ec2]:
    moto.reset()
    async with ec2_client(moto.url) as client:
        subnets = sorted((await client.describe_subnets())["Subnets"], key=lambda s: s["AvailabilityZone"])
        ami = (await client.register_image(Name="incl-gpu", RootDeviceName="/dev/sda1"))["ImageId"]
        yield Ec2(moto.url, client, [s["SubnetId"] for s in subnets[:2]], ami)


class Machines:
    """A `start_agent` that stands a real process (`sleep 60`) in for each agent and records every call."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.calls: list[tuple[str, str]] = []

    def __call__(self, instance_id: str, endpoint: str) -> Daemon:
        self.calls.append((instance_id, endpoint))
        return Daemon(instance_id, ["sleep", "60"], self.tmp / f"{instance_id}.log").start()


async def identity(endpoint: str) -> InstanceIdentity:
    async with Imds(MetadataConfig(endpoint=endpoint)) as md:
        return await md.identity()


async def spot_notice(endpoint: str) -> InstanceAction | None:
    async with Imds(MetadataConfig(endpoint=endpoint)) as md:
        return await md.spot_notice()


async def test_running_instances_boot_once_with_the_metadata_ec2_launched_them_with(ec2: Ec2, tmp_path: Path) -> None:
    """A spot and an on-demand instance each get one agent, started with an IMDSv2 endpoint that answers (token
    first) with the instance's id, type, availability zone, life cycle and private IP as moto reports them."""
    spot = await ec2.run("g5.xlarge", spot=True, subnet=0)
    on_demand = await ec2.run("m7i.2xlarge", subnet=1)
    machines = Machines(tmp_path)
    async with FakeImds() as imds, BootSimulator(ec2.url, imds, machines, poll=0.05) as sim:
        booted = await sim.wait_booted(2)
        assert sorted(booted) == sorted([spot, on_demand])
        assert sorted(machines.calls) == sorted(sim.endpoints.items())
        for instance_id, lifecycle in ((spot, "spot"), (on_demand, "on-demand")):
            i = await ec2.describe(instance_id)
            assert await identity(sim.endpoints[instance_id]) == InstanceIdentity(
                instance_id=instance_id, instance_type=i["InstanceType"], lifecycle=lifecycle,
                availability_zone=i["Placement"]["AvailabilityZone"], local_ipv4=i["PrivateIpAddress"])
            assert sim.booted[instance_id].running
        assert all(r.token for r in imds.requests if r.method == "GET") and imds.requests
        late = await ec2.run("t3.micro")
        assert (await sim.wait_booted(3))[2] == late  # several polls later: each instance booted only once
    assert [c[0] for c in machines.calls] == [*booted, late]
    assert not any(agent.running for agent in sim.booted.values())  # the fake EC2 went away with the simulator


async def test_terminating_an_instance_kills_its_agent_and_no_other(ec2: Ec2, tmp_path: Path) -> None:
    """Terminated in moto (as the controller does): that instance's process dies of SIGKILL, the other runs on; one
    whose process the test killed already is handled the same way."""
    a, b, c = [await ec2.run() for _ in range(3)]
    async with FakeImds() as imds, BootSimulator(ec2.url, imds, Machines(tmp_path),
                                                 poll=0.05) as sim:
        await sim.wait_booted(3)
        sim.booted[c].kill()
        await ec2.client.terminate_instances(InstanceIds=[a, c])
        agent = await sim.wait_gone(a)
        await sim.wait_gone(c)
        assert agent.proc is not None and agent.proc.returncode == -9
        assert sim.booted[b].running and sim.gone == {a, c}


async def test_interrupt_posts_the_notice_and_reclaim_ends_a_spot_instance_as_ec2_would(
        ec2: Ec2, tmp_path: Path) -> None:
    """interrupt: the instance's metadata shows a terminate notice two minutes ahead. reclaim: its process dies
    at once and DescribeInstances through `ec2_url` says terminated by Server.SpotInstanceTermination; on-demand
    instances can be neither."""
    spot, on_demand = await ec2.run(spot=True), await ec2.run()
    async with FakeImds() as imds, BootSimulator(ec2.url, imds, Machines(tmp_path),
                                                 poll=0.05) as sim:
        await sim.wait_booted(2)
        assert await spot_notice(sim.endpoints[spot]) is None
        before = time.time()
        deadline = sim.interrupt(spot)
        assert await spot_notice(sim.endpoints[spot]) == InstanceAction(action="terminate", time=deadline)
        assert 119 <= deadline.timestamp() - before <= 121
        with pytest.raises(ValueError, match="on-demand"):
            sim.interrupt(on_demand)
        with pytest.raises(ValueError, match="on-demand"):
            await sim.reclaim(on_demand)
        await sim.reclaim(spot)
        agent = sim.booted[spot]
        assert agent.proc is not None and agent.proc.returncode == -9 and sim.booted[on_demand].running
        async with ec2_client(sim.ec2_url) as via_proxy:
            reply = await via_proxy.describe_instances(InstanceIds=[spot, on_demand])
    seen = {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}
    assert (seen[spot]["State"]["Name"], seen[spot]["StateReason"]["Code"]) == \
        ("terminated", "Server.SpotInstanceTermination")
    assert seen[on_demand]["State"]["Name"] == "running"


async def test_a_failing_start_agent_fails_the_wait_with_its_error(ec2: Ec2) -> None:
    """An error in the test's start_agent is not swallowed: the wait raises with it as the cause."""
    await ec2.run()

    def broken(instance_id: str, endpoint: str) -> Daemon:
        raise OSError("no such agent")

    with pytest.raises(OSError, match="no such agent"):  # __aexit__ raises it once more, as the task's result
        async with FakeImds() as imds, BootSimulator(ec2.url, imds, broken, poll=0.05) as sim:
            with pytest.raises(RuntimeError, match="stopped") as caught:
                await sim.wait_booted(1)
            assert isinstance(caught.value.__cause__, OSError)


async def test_a_real_agent_boots_from_a_launched_instance_and_dies_with_it(ec2: Ec2, cluster: Cluster) -> None:
    """With the Cluster's agents: a spot instance launched in moto registers a real agent that names the instance,
    its type, market and zone (read from IMDSv2) and reads the interruption notice; terminating the instance kills
    it, and the controller says lost."""
    cluster.start_controller()

    def start(instance_id: str, endpoint: str) -> Daemon:
        return cluster.start_agent(instance_id, provider="aws", metadata={"endpoint": endpoint},
                                   spot={"poll_interval": 0.1}, docker={"enabled": False})

    spot = await ec2.run("g5.xlarge", spot=True)
    zone = (await ec2.describe(spot))["Placement"]["AvailabilityZone"]
    async with FakeImds() as imds, BootSimulator(ec2.url, imds, start, poll=0.05) as sim:
        await sim.wait_booted(1)
        await cluster.wait_agents(1)
        async with cluster.client() as c:
            [view] = await c.agents()
        info = view.record.info
        assert (info.agent_id, info.provider, info.instance_id, info.instance_type, info.market, info.zone) == \
            (spot, "aws", spot, "g5.xlarge", "spot", zone)
        sim.interrupt(spot)
        await imds.wait(lambda requests: any(r.path.endswith("/spot/instance-action") and r.status == 200
                                             for r in requests))
        await ec2.client.terminate_instances(InstanceIds=[spot])
        assert not (await sim.wait_gone(spot)).running

        async def lost() -> bool:
            async with cluster.client() as c:
                return [a.record.state for a in await c.agents()] == [AgentState.LOST]

        await wait_for(lost, 10, "the controller to declare the agent lost")
