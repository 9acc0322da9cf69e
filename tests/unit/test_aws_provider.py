"""The aws provider against moto's EC2 (a real server process), with a real HTTP proxy in front of it for the
capacity errors and spot interruptions moto never produces; the catalog, user-data and IAM files it relies on."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from aiobotocore.session import get_session
from ec2proxy import Ec2Proxy
from imds import FakeImds, Instance
from motoserver import AWS_ENV, MotoServer

from incl.auth import keys
from incl.controller.providers import open_provider
from incl.controller.providers.aws import (
    AwsProvider,
    LaunchFailed,
    NoCapacity,
    NoInstanceType,
    client_token,
    placement_group_name,
)
from incl.controller.providers.catalog import AwsConfig, CatalogEntry, candidates, efa_refusal, shapes
from incl.controller.reconcile import (
    EXISTING,
    TAG_ATTEMPT,
    TAG_CLUSTER,
    TAG_GENERATION,
    TAG_JOB,
    TAG_RANK,
    TAG_ROLE,
    Launch,
    Market,
)
from incl.proto.messages import Resources as Shape
from incl.proto.spec import Resources

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NATS_URL = "nats://user:pa$$word@10.0.0.5:4222"  # a `$` the shell must leave alone
STORE_URL = "s3://incl-artifacts/prod"
CATALOG = [
    CatalogEntry(gpus=1, gpu_model="A10G", cpus=4, memory_gib=16, instance_types=["g5.xlarge", "g5.2xlarge"]),
    CatalogEntry(gpus=8, gpu_model="H100", cpus=192, memory_gib=2048, instance_types=["p5.48xlarge"], efa=True),
    CatalogEntry(cpus=8, memory_gib=32, instance_types=["m7i.2xlarge"]),
]


def launch(job: str = "j1", attempt: int = 1, market: Market = Market.SPOT, cluster: str = "c1",
           gpus: str = "A10G:1", generation: int = 0, nodes: int = 1, efa: bool = False) -> Launch:
    model, _, count = gpus.partition(":")
    return Launch(cluster=cluster, job_id=job, attempt=attempt, market=market, generation=generation,
                  resources=Resources(gpus=int(count), gpu_model=model, cpus=2, nodes=nodes, efa=efa))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


class Aws:
    """moto, reset, with what a launch needs (AMI, two subnets, a security group, an instance profile)."""

    def __init__(self, moto: MotoServer, ec2: Any) -> None:
        self.moto, self.ec2 = moto, ec2
        self.subnets: list[str] = []
        self.cfg = AwsConfig()

    def config(self, endpoint: str | None = None, **over: Any) -> AwsConfig:
        return msgspec.structs.replace(self.cfg, endpoint_url=endpoint or self.moto.url, **over)

    def provider(self, endpoint: str | None = None, **over: Any) -> AwsProvider:
        return AwsProvider(self.config(endpoint, **over), nats_url=NATS_URL, store_url=STORE_URL)

    async def instance(self, instance_id: str) -> dict[str, Any]:
        reply = await self.ec2.describe_instances(InstanceIds=[instance_id])
        return reply["Reservations"][0]["Instances"][0]

    async def user_data(self, instance_id: str) -> str:
        reply = await self.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return base64.b64decode(reply["UserData"]["Value"]).decode()


@pytest.fixture
async def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Aws]:
    moto.reset()
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    session = get_session()
    async with session.create_client("ec2", region_name="us-east-1", endpoint_url=moto.url) as ec2, \
            session.create_client("iam", region_name="us-east-1", endpoint_url=moto.url) as iam:
        await iam.create_instance_profile(InstanceProfileName="incl-agent")
        env = Aws(moto, ec2)
        subnets = sorted((await ec2.describe_subnets())["Subnets"], key=lambda s: s["AvailabilityZone"])
        env.subnets = [s["SubnetId"] for s in subnets[:2]]
        sg = (await ec2.describe_security_groups())["SecurityGroups"][0]["GroupId"]
        ami = (await ec2.register_image(Name="incl-gpu", RootDeviceName="/dev/sda1"))["ImageId"]  # our own AMI
        env.cfg = AwsConfig(ami=ami, subnets=env.subnets, security_group_ids=[sg], instance_profile="incl-agent",
                            extra_tags={"team": "ml", TAG_CLUSTER: "not-this"}, catalog=CATALOG,
                            api_max_attempts=1, launch_rounds=2, launch_backoff_initial=0.01,
                            launch_backoff_max=0.02, describe_page_size=5)
        yield env


# --- launch -------------------------------------------------------------------------------------------------


async def test_spot_launch_has_the_type_market_tags_and_user_data(aws: Aws) -> None:
    """A spot launch: first candidate type in the first subnet, one-time spot, our tags, the rendered boot script."""
    async with aws.provider() as provider:
        (got,) = await provider.launch(launch())
    i = await aws.instance(got.instance_id)
    tags = {t["Key"]: t["Value"] for t in i["Tags"]}
    assert (i["InstanceType"], i["SubnetId"], i.get("InstanceLifecycle")) == ("g5.xlarge", aws.subnets[0], "spot")
    assert tags == {TAG_CLUSTER: "c1", TAG_JOB: "j1", TAG_ATTEMPT: "1", TAG_GENERATION: "0", TAG_ROLE: "agent",
                    "team": "ml", "Name": "incl-c1-j1-1"}
    assert i["IamInstanceProfile"]["Arn"].endswith("/incl-agent")
    assert i["MetadataOptions"]["HttpTokens"] == "required"
    assert i["ClientToken"] == client_token(launch(), "g5.xlarge", aws.subnets[0])
    assert (got.instance_type, got.market, got.subnet_id, got.existing) == \
        ("g5.xlarge", Market.SPOT, aws.subnets[0], False)
    script = await aws.user_data(got.instance_id)
    assert f"nats_url: {json.dumps(NATS_URL)}\n" in script and f"store_url: {json.dumps(STORE_URL)}\n" in script
    assert "@@" not in script and script.startswith("#!/bin/bash\n")
    subprocess.run(["bash", "-n"], input=script.encode(), check=True)


async def test_on_demand_launch_and_describe_reads_market_and_tags_back(aws: Aws) -> None:
    """On-demand has no spot lifecycle; describe() reports both instances as the reconciler sees them."""
    async with aws.provider() as provider:
        (spot,) = await provider.launch(launch("j1"))
        (od,) = await provider.launch(launch("j2", market=Market.ON_DEMAND))
        seen = {i.instance_id: i for i in await provider.describe("c1")}
    assert "InstanceLifecycle" not in await aws.instance(od.instance_id)
    assert {k: (v.market, v.job_id, v.attempt, v.state in EXISTING) for k, v in seen.items()} == {
        spot.instance_id: (Market.SPOT, "j1", 1, True), od.instance_id: (Market.ON_DEMAND, "j2", 1, True)}


async def test_launching_one_attempt_twice_gives_one_instance(aws: Aws) -> None:
    """A controller that retries a launch (crash, lost reply) gets the instance it made, never a second one."""
    async with aws.provider() as provider:
        (first,) = await provider.launch(launch())
    async with aws.provider() as provider:  # as after a restart
        (again,) = await provider.launch(launch())
        (other,) = await provider.launch(launch(attempt=2))
        ours = await provider.describe("c1")
    assert again.instance_id == first.instance_id and again.existing
    assert other.instance_id != first.instance_id
    assert sorted((i.job_id, i.attempt) for i in ours) == [("j1", 1), ("j1", 2)]


async def test_a_relaunch_is_a_new_instance_and_a_retried_relaunch_is_not(aws: Aws) -> None:
    """Generation 1 of an attempt gets an instance of its own, tagged and tokened as generation 1, although the
    generation-0 instance still exists (the plan terminates it in the same pass); retried, it gets that one back.
    describe() then shows the terminated generation 0 with its state reason."""
    s1 = aws.subnets[0]
    async with aws.provider() as provider:
        (first,) = await provider.launch(launch())
        (second,) = await provider.launch(launch(generation=1))
        (again,) = await provider.launch(launch(generation=1))
        await provider.terminate("c1", [first.instance_id])
        seen = {i.instance_id: i for i in await provider.describe("c1")}
    assert second.instance_id != first.instance_id and not second.existing
    assert again.instance_id == second.instance_id and again.existing
    i = await aws.instance(second.instance_id)
    assert {t["Key"]: t["Value"] for t in i["Tags"]}[TAG_GENERATION] == "1"
    assert i["ClientToken"] == client_token(launch(generation=1), "g5.xlarge", s1) != \
        client_token(launch(), "g5.xlarge", s1)
    gone = seen[first.instance_id]
    assert (gone.state, gone.state_reason, gone.generation, gone.market) == \
        ("terminated", "Client.UserInitiatedShutdown", 0, Market.SPOT)
    assert (seen[second.instance_id].state, seen[second.instance_id].generation) == ("running", 1)


async def test_capacity_errors_fail_over_to_the_next_subnet_then_type(aws: Aws) -> None:
    """g5.xlarge has no capacity anywhere: both subnets are tried, then g5.2xlarge launches."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        proxy.fail = {"g5.xlarge": "InsufficientInstanceCapacity"}
        (got,) = await provider.launch(launch())
    s1, s2 = aws.subnets
    assert proxy.runs == [("g5.xlarge", s1, "InsufficientInstanceCapacity"),
                          ("g5.xlarge", s2, "InsufficientInstanceCapacity"), ("g5.2xlarge", s1, "ok")]
    assert (await aws.instance(got.instance_id))["InstanceType"] == "g5.2xlarge"


async def test_a_subnet_without_the_type_is_skipped(aws: Aws) -> None:
    """Unsupported in the first subnet's zone (and spot limits there): the same type launches in the second."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        proxy.fail = {aws.subnets[0]: "Unsupported"}
        (got,) = await provider.launch(launch())
    assert (got.instance_type, got.subnet_id) == ("g5.xlarge", aws.subnets[1])


async def test_no_capacity_anywhere_names_every_try_and_launches_nothing(aws: Aws) -> None:
    """Every candidate fails, for every round: a clear error naming types, subnets and codes; no instance."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        proxy.fail = {"g5.xlarge": "InsufficientInstanceCapacity", "g5.2xlarge": "MaxSpotInstanceCountExceeded"}
        with pytest.raises(NoCapacity) as caught:
            await provider.launch(launch())
        assert await provider.describe("c1") == []
    assert len(proxy.runs) == 2 * 4  # launch_rounds x (2 types x 2 subnets)
    s1, s2 = aws.subnets
    message = str(caught.value)
    assert message.startswith("no spot capacity for job j1 attempt 1 after 8 tries: ")
    assert f"g5.xlarge in {s1}: InsufficientInstanceCapacity" in message
    assert f"g5.2xlarge in {s2}: MaxSpotInstanceCountExceeded" in message


async def test_other_errors_stop_the_launch_at_once(aws: Aws) -> None:
    """An error that is not about capacity (a bad parameter) is not failed over: one try, a clear error."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        proxy.fail = {"g5.xlarge": "InvalidParameterValue"}
        with pytest.raises(LaunchFailed, match="InvalidParameterValue"):
            await provider.launch(launch())
    assert len(proxy.runs) == 1


async def test_no_instance_type_fits(aws: Aws) -> None:
    """A job no catalog entry fits is refused with an error naming it, and nothing is launched."""
    async with aws.provider() as provider:
        with pytest.raises(NoInstanceType, match="job j1"):
            await provider.launch(launch(gpus="A100:1"))


# --- gangs: placement groups, all or none, EFA -----------------------------------------------------------------


def _tags(i: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in i["Tags"]}


async def test_a_gang_is_one_run_instances_into_a_cluster_placement_group_with_rank_tags(aws: Aws) -> None:
    """A 2-node launch: its cluster placement group made first (named and tagged for the launch), then one
    RunInstances of MinCount = MaxCount = 2 into it, in one subnet; ranks 0 and 1 tagged by launch index. Retried
    (after a restart), it finds the same two and makes nothing."""
    gang = launch(nodes=2)
    name = placement_group_name(gang)
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        got = await provider.launch(gang)
        again = await provider.launch(gang)
        groups = await provider.placement_groups("c1")
    (form,) = proxy.forms
    assert (form["MinCount"], form["MaxCount"], form["Placement.GroupName"]) == ("2", "2", name)
    assert proxy.actions.index("CreatePlacementGroup") < proxy.actions.index("RunInstances")
    assert name == "incl-c1-j1-1-0" and proxy.groups[name]["strategy"] == "cluster"
    assert [(g.name, g.launch_key()) for g in groups] == [(name, ("j1", 1, 0))]
    assert [g.rank for g in got] == [0, 1] and {g.placement_group for g in got} == {name}
    assert {proxy.placed[g.instance_id] for g in got} == {name}
    described = [await aws.instance(g.instance_id) for g in got]
    assert {i["SubnetId"] for i in described} == {aws.subnets[0]}
    assert len({i["Placement"]["AvailabilityZone"] for i in described}) == 1
    assert [_tags(i)[TAG_RANK] for i in described] == ["0", "1"]
    assert all((_tags(i)[TAG_JOB], _tags(i)[TAG_ATTEMPT], _tags(i)[TAG_GENERATION]) == ("j1", "1", "0")
               for i in described)
    assert [a.instance_id for a in again] == [g.instance_id for g in got] and all(a.existing for a in again)
    assert len(proxy.forms) == 1


async def test_a_gang_fails_over_whole_and_a_partial_launch_is_terminated_at_once(aws: Aws) -> None:
    """g5.xlarge has no capacity in the first subnet, and in the second only one of the two comes up: that one is
    terminated at once and the gang launches whole on g5.2xlarge; nothing else is left."""
    s1, s2 = aws.subnets
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        proxy.fail = {s1: "InsufficientInstanceCapacity"}
        proxy.short = {"g5.xlarge": 1}
        got = await provider.launch(launch(nodes=2))
        seen = await provider.describe("c1")
    assert proxy.runs == [("g5.xlarge", s1, "InsufficientInstanceCapacity"), ("g5.xlarge", s2, "ok"),
                          ("g5.2xlarge", s1, "InsufficientInstanceCapacity"), ("g5.2xlarge", s2, "ok")]
    assert [g.instance_type for g in got] == ["g5.2xlarge"] * 2 and {g.subnet_id for g in got} == {s2}
    live = sorted(i.instance_id for i in seen if i.state in EXISTING)
    assert live == sorted(g.instance_id for g in got) and len(seen) == 3
    (partial,) = [i for i in seen if i.instance_id not in live]
    assert partial.instance_type == "g5.xlarge" and partial.state == "terminated"


async def test_a_gang_with_no_capacity_leaves_no_instance_and_no_placement_group(aws: Aws) -> None:
    """Every candidate fails for the gang: NoCapacity, no instance, and its placement group deleted."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        proxy.fail = {"g5.xlarge": "InsufficientInstanceCapacity"}
        proxy.short = {"g5.2xlarge": 1}
        with pytest.raises(NoCapacity, match="PartialLaunch"):
            await provider.launch(launch(nodes=2))
        assert [i for i in await provider.describe("c1") if i.state in EXISTING] == []
    assert proxy.groups == {} and "DeletePlacementGroup" in proxy.actions


async def test_placement_groups_are_deleted_only_once_empty_and_only_the_clusters(aws: Aws) -> None:
    """A group whose instances still run is kept (EC2: in use); once they are terminated it goes; another
    cluster's group is never touched."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        got = await provider.launch(launch(nodes=2))
        other = await provider.launch(launch(nodes=2, cluster="c2"))
        name = got[0].placement_group
        assert name is not None
        assert await provider.delete_placement_groups("c1", [name, other[0].placement_group or ""]) == []
        await provider.terminate("c1", [g.instance_id for g in got])
        assert await provider.delete_placement_groups("c1", [name]) == [name]
    assert set(proxy.groups) == {other[0].placement_group}


async def test_efa_asks_for_an_efa_interface_on_types_that_have_it(aws: Aws) -> None:
    """`efa` on an H100 gang: p5.48xlarge (catalog `efa: true`) launches with one EFA interface that carries the
    subnet and security groups (none beside it, as EC2 requires); without `efa` no interface is asked for."""
    sg = aws.cfg.security_group_ids
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        got = await provider.launch(launch(gpus="H100:8", nodes=2, efa=True))
        await provider.launch(launch("plain", gpus="H100:8", nodes=2))
    efa, plain = proxy.forms
    assert {k: v for k, v in efa.items() if k.startswith("NetworkInterface.1.")} == {
        "NetworkInterface.1.DeviceIndex": "0", "NetworkInterface.1.NetworkCardIndex": "0",
        "NetworkInterface.1.InterfaceType": "efa", "NetworkInterface.1.DeleteOnTermination": "true",
        "NetworkInterface.1.SubnetId": aws.subnets[0], "NetworkInterface.1.SecurityGroupId.1": sg[0]}
    assert "SubnetId" not in efa and "SecurityGroupId.1" not in efa
    assert not any(k.startswith("NetworkInterface") for k in plain) and plain["SubnetId"] == aws.subnets[0]
    assert [(await aws.instance(g.instance_id))["SubnetId"] for g in got] == [aws.subnets[0]] * 2


def test_efa_narrows_candidates_and_is_refused_when_nothing_that_fits_has_it() -> None:
    """With `efa`, only catalog types marked efa (or job-named types the catalog does not list); a job whose
    fitting types have no EFA gets a reason naming them, and the provider refuses it."""
    assert candidates(CATALOG, Resources(gpus=1, efa=True)) == ["p5.48xlarge"]
    assert candidates(CATALOG, Resources(gpus=1, instance_types=["g5.xlarge", "p4d.24xlarge"], efa=True)) == \
        ["p4d.24xlarge"]
    assert efa_refusal(CATALOG, Resources(gpus=8, gpu_model="H100", efa=True)) is None
    assert efa_refusal(CATALOG, Resources(gpus=1, gpu_model="A10G")) is None
    why = efa_refusal(CATALOG, Resources(gpus=1, gpu_model="A10G", efa=True))
    assert why == "no instance type that fits has EFA (fitting: g5.xlarge, g5.2xlarge; with EFA: p5.48xlarge)"
    provider = AwsProvider(AwsConfig(catalog=CATALOG), nats_url=NATS_URL, store_url=STORE_URL)
    assert provider.refusal(Resources(cpus=2, efa=True)) is not None


# --- describe, terminate, interruptions -----------------------------------------------------------------------


async def test_describe_pages_through_the_cluster_only(aws: Aws) -> None:
    """Seven instances over two pages of five, and another cluster's instance left out."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        ids = {(await provider.launch(launch(f"j{n}")))[0].instance_id for n in range(7)}
        await provider.launch(launch("x", cluster="c2"))
        del proxy.actions[:]
        assert {i.instance_id for i in await provider.describe("c1")} == ids
    assert proxy.actions == ["DescribeInstances", "DescribeInstances"]


async def test_terminate_touches_only_the_clusters_instances(aws: Aws) -> None:
    """An instance without our tag, or another cluster's, survives a terminate that names it."""
    async with aws.provider() as provider:
        ours = (await provider.launch(launch()))[0].instance_id
        theirs = (await provider.launch(launch(cluster="c2")))[0].instance_id
        bare = (await aws.ec2.run_instances(ImageId=aws.cfg.ami, MinCount=1, MaxCount=1,
                                            InstanceType="t3.micro"))["Instances"][0]["InstanceId"]
        assert await provider.terminate("c1", [ours, theirs, bare]) == [ours]
        assert await provider.terminate("c1", [ours]) == []  # already on its way out
    states = {i: (await aws.instance(i))["State"]["Name"] for i in (ours, theirs, bare)}
    assert states[ours] == "terminated" and states[theirs] in EXISTING and states[bare] in EXISTING


async def test_spot_interrupted_reads_the_state_reason(aws: Aws) -> None:
    """Server.SpotInstanceTermination is an interruption; a user's terminate or an unknown id is not."""
    async with Ec2Proxy(aws.moto.url) as proxy, aws.provider(proxy.url) as provider:
        a = (await provider.launch(launch("a")))[0].instance_id
        b = (await provider.launch(launch("b")))[0].instance_id
        await provider.terminate("c1", [a, b])
        proxy.interrupted = {a}
        assert await provider.spot_interrupted([a, b, "i-0123456789abcdef0"]) == {
            a: True, b: False, "i-0123456789abcdef0": False}
        seen = {i.instance_id: i.state_reason for i in await provider.describe("c1")}
    assert seen == {a: "Server.SpotInstanceTermination", b: "Client.UserInitiatedShutdown"}


# --- the boot script --------------------------------------------------------------------------------------------


async def test_user_data_configures_the_agent_from_imdsv2(aws: Aws, tmp_path: Path) -> None:
    """The launched instance's user-data, run by bash against the IMDSv2 fake: the agent's config names the
    instance as the agent, the controller's NATS and the store, and the agent unit is restarted."""
    async with aws.provider() as provider:
        script = await aws.user_data((await provider.launch(launch()))[0].instance_id)
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/systemctl.calls\n')
    systemctl.chmod(0o755)
    async with FakeImds() as imds:
        endpoint = await imds.add(Instance(instance_id="i-0abc123", instance_type="g5.xlarge"))
        env = {"PATH": os.environ["PATH"], "INCL_IMDS_ENDPOINT": endpoint, "INCL_CONFIG_DIR": str(tmp_path / "etc"),
               "INCL_SYSTEMCTL": str(systemctl)}
        proc = await asyncio.create_subprocess_exec("bash", "-c", script, env=env, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate()  # the loop keeps serving the fake meanwhile
        assert proc.returncode == 0, err.decode()
        assert out.decode() == "incl: agent i-0abc123 configured and started\n"
        assert [(r.method, r.path, r.status) for r in imds.requests] == [
            ("PUT", "/latest/api/token", 200), ("GET", "/latest/meta-data/instance-id", 200)]
    config = yaml.safe_load((tmp_path / "etc" / "agent.yaml").read_text())
    assert config == {"agent_id": "i-0abc123", "provider": "aws", "nats_identity": "creds", "nats_url": NATS_URL,
                      "store_url": STORE_URL, "work_dir": "/var/lib/incl/agent"}
    assert (tmp_path / "etc" / "agent.yaml").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "systemctl.calls").read_text() == "restart incl-agent.service\n"


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:incl/agents-AbCdEf"


async def test_user_data_fetches_the_agents_secret_and_never_holds_it(aws: Aws, tmp_path: Path) -> None:
    """With `aws.agent_secret`, the instance's user-data names the secret and reads it at boot with the instance
    role (the AWS CLI, faked here): the credential file and the CA land next to the agent's config, mode 0600, and
    the config names them. The user-data itself holds no key material."""
    seed = keys.new_seed()
    creds_text = f"# incl agent i-0abc123\n{seed}\n"
    ca_text = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    async with aws.provider(agent_secret=SECRET_ARN) as provider:
        script = await aws.user_data((await provider.launch(launch()))[0].instance_id)
    assert f"agent_secret='{SECRET_ARN}'" in script and "region='us-east-1'" in script
    assert seed not in script and "BEGIN CERTIFICATE" not in script
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"creds": creds_text, "ca": ca_text}))
    fake_aws = tmp_path / "aws"  # answers exactly the call the script must make, as the AWS CLI prints it
    call = (f"secretsmanager get-secret-value --region us-east-1 --secret-id {SECRET_ARN} --query SecretString "
            "--output text")
    fake_aws.write_text(f'#!/bin/sh\n[ "$*" = "{call}" ] || {{ echo "bad call: $*" >&2; exit 2; }}\ncat {secret}\n')
    fake_aws.chmod(0o755)
    systemctl = tmp_path / "systemctl"
    systemctl.write_text("#!/bin/sh\ntrue\n")
    systemctl.chmod(0o755)
    etc = tmp_path / "etc"
    async with FakeImds() as imds:
        endpoint = await imds.add(Instance(instance_id="i-0abc123", instance_type="g5.xlarge"))
        env = {"PATH": os.environ["PATH"], "INCL_IMDS_ENDPOINT": endpoint, "INCL_CONFIG_DIR": str(etc),
               "INCL_SYSTEMCTL": str(systemctl), "INCL_AWS": str(fake_aws), "INCL_PYTHON": sys.executable}
        proc = await asyncio.create_subprocess_exec("bash", "-c", script, env=env, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    config = yaml.safe_load((etc / "agent.yaml").read_text())
    assert (config["agent_id"], config["creds"], config["tls_ca"]) == ("i-0abc123", str(etc / "agent.nk"),
                                                                       str(etc / "ca.pem"))
    assert (etc / "agent.nk").read_text() == creds_text and (etc / "ca.pem").read_text() == ca_text
    assert {p.name: p.stat().st_mode & 0o777 for p in etc.iterdir()} == {"agent.yaml": 0o600, "agent.nk": 0o600,
                                                                         "ca.pem": 0o600}
    assert seed not in out.decode() + err.decode()


def test_an_agent_secret_the_shell_could_misread_is_refused() -> None:
    with pytest.raises(LaunchFailed, match="not a Secrets Manager name or ARN"):
        AwsProvider(AwsConfig(agent_secret="x'; rm -rf /"), nats_url=NATS_URL, store_url=STORE_URL)


# --- catalog, deploy files ------------------------------------------------------------------------------------


def test_candidates_smallest_fitting_shape_first_or_the_jobs_own_list() -> None:
    """GPU count, model (any case), CPUs and memory must fit; CPU jobs get CPU machines; instance_types wins."""
    assert candidates(CATALOG, Resources(gpus=1, gpu_model="a10g")) == ["g5.xlarge", "g5.2xlarge"]
    assert candidates(CATALOG, Resources(gpus=1)) == ["g5.xlarge", "g5.2xlarge", "p5.48xlarge"]
    assert candidates(CATALOG, Resources(gpus=2, cpus=8)) == ["p5.48xlarge"]
    assert candidates(CATALOG, Resources(gpus=1, memory=17 * 2**30)) == ["p5.48xlarge"]
    assert candidates(CATALOG, Resources(cpus=2)) == ["m7i.2xlarge"]
    assert candidates(CATALOG, Resources(cpus=64)) == []
    assert candidates(CATALOG, Resources(gpus=1, instance_types=["g6.xlarge", "g6.xlarge", "g5.xlarge"])) == \
        ["g6.xlarge", "g5.xlarge"]
    assert shapes(CATALOG)[1] == Shape(cpus=192, memory=2048 * 2**30, gpus=8, gpu_model="H100")


def test_example_config_loads() -> None:
    """deploy/aws.example.yaml is a valid controller config that opens the aws provider, whose shapes (for the
    submit-time fit check) are its catalog's."""
    from incl.controller.config import load_config
    cfg = load_config(DEPLOY / "aws.example.yaml")
    assert cfg.provider == "aws" and cfg.aws.catalog and all(e.instance_types for e in cfg.aws.catalog)
    provider = open_provider(cfg)
    assert isinstance(provider, AwsProvider) and provider.provisions
    assert provider.shapes() == shapes(cfg.aws.catalog) and len(provider.shapes()) == len(cfg.aws.catalog)


async def test_local_provider_provisions_nothing() -> None:
    """The default `local` provider launches, lists and reclaims nothing, and adds no shape a job could fit."""
    from incl.controller.config import ControllerConfig
    async with open_provider(ControllerConfig()) as provider:
        assert not provider.provisions and provider.shapes() == []
        assert await provider.describe("c1") == [] and await provider.terminate("c1", ["i-1"]) == []
        assert await provider.spot_interrupted(["i-1"]) == {"i-1": False}
        with pytest.raises(LaunchFailed):
            await provider.launch(launch())


def _statements(name: str) -> list[dict[str, Any]]:
    doc = json.loads((DEPLOY / "iam" / name).read_text())
    assert doc["Version"] == "2012-10-17"
    return doc["Statement"]


def test_iam_policies_are_least_privilege_and_match_the_tags_the_provider_writes() -> None:
    """Launch needs our cluster and role tags, terminate only our cluster's instances, the instance no EC2."""
    by_sid = {s["Sid"]: s for s in _statements("controller-policy.json")}
    run = by_sid["LaunchTaggedInstances"]
    assert run["Action"] == "ec2:RunInstances" and run["Condition"]["StringEquals"] == {
        f"aws:RequestTag/{TAG_CLUSTER}": "CLUSTER", f"aws:RequestTag/{TAG_ROLE}": "agent"}
    assert by_sid["TagOnLaunchOnly"]["Condition"]["StringEquals"] == {"ec2:CreateAction": "RunInstances"}
    term = by_sid["TerminateClusterInstances"]
    assert term["Action"] == "ec2:TerminateInstances"
    assert term["Condition"]["StringEquals"] == {f"aws:ResourceTag/{TAG_CLUSTER}": "CLUSTER"}
    assert by_sid["PassInstanceRole"]["Condition"]["StringEquals"] == {"iam:PassedToService": "ec2.amazonaws.com"}
    unconditioned = [s for s in by_sid.values() if "Condition" not in s]
    assert all(a.startswith("ec2:Describe") for s in unconditioned if s["Resource"] == "*"
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    actions = {a for s in _statements("instance-policy.json")
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions and all(a.startswith("s3:") for a in actions - {"secretsmanager:GetSecretValue"})
    reads = next(s for s in _statements("instance-policy.json") if s["Sid"] == "ReadAgentSecret")
    assert reads["Resource"] == "arn:aws:secretsmanager:REGION:ACCOUNT_ID:secret:AGENT_SECRET-*"  # that one only
    trust = _statements("instance-trust-policy.json")
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]
