"""AWS end to end: the controller provisions instances in moto's EC2, each boots a real agent (through the boot
simulator, with its own IMDSv2 fake), jobs run, spot instances are interrupted and jobs resume from checkpoints.
"""

from __future__ import annotations

import base64
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from conftest import CONTROLLER_CFG, Cluster, Daemon, wait_for
from ec2boot import BootSimulator
from imds import FakeImds
from motoserver import MotoServer

from incl.artifacts.refs import blob_key
from incl.artifacts.store import open_store
from incl.artifacts.tree import read_manifest, resolve_ref

pytestmark = pytest.mark.slow

CATALOG = [
    {"gpus": 1, "gpu_model": "A10G", "cpus": 4, "memory_gib": 16, "instance_types": ["g5.xlarge", "g5.2xlarge"]},
    {"gpus": 0, "cpus": 4, "memory_gib": 16, "instance_types": ["m5.xlarge"]},
]


def gpu_recording(tmp: Path) -> Path:
    """One A10G, busy: what NVML would report on a g5 instance (no GPU here)."""
    path = tmp / "a10g.yaml"
    info = [{"index": 0, "uuid": "GPU-0", "model": "A10G", "memory_total": 24 * 2**30}]
    path.write_text(yaml.safe_dump({"gpus": info, "readings": [{"0": {"util_gpu": 90, "util_mem": 40,
                                                                       "memory_used": 2**30}}] * 10}))
    return path


class World:
    def __init__(self, cluster: Cluster, moto: MotoServer, sim: BootSimulator, imds: FakeImds) -> None:
        self.cluster, self.moto, self.sim, self.imds = cluster, moto, sim, imds
        session = botocore.session.get_session()
        self.ec2 = session.create_client("ec2", endpoint_url=moto.url, region_name="us-east-1")
        self.s3 = session.create_client("s3", endpoint_url=moto.url, region_name="us-east-1")

    def instances(self) -> list[dict[str, Any]]:
        pages = self.ec2.describe_instances(Filters=[{"Name": "tag:incl:cluster", "Values": ["t"]}])
        return [i for r in pages["Reservations"] for i in r["Instances"]]

    def live(self) -> list[dict[str, Any]]:
        return [i for i in self.instances() if i["State"]["Name"] in ("pending", "running")]

    def start_controller(self, **overrides: Any) -> Daemon:
        ami = self.ec2.register_image(Name="incl-gpu", RootDeviceName="/dev/sda1")["ImageId"]
        aws = {"endpoint_url": self.sim.ec2_url, "ami": ami, "catalog": CATALOG, "api_max_attempts": 1,
               "launch_rounds": 2, "launch_backoff_initial": 0.1, "launch_backoff_max": 0.2,
               **overrides.pop("aws", {})}
        reconcile = {"cluster": "t", "interval": 0.3, "boot_timeout": 8.0, "idle_timeout": 1.5,
                     **overrides.pop("reconcile", {})}
        return self.cluster.start_controller(provider="aws", aws=aws, reconcile=reconcile,
                                             store_url="s3://incl-store/t", **overrides)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the file (its start imports all of moto: seconds of CPU), emptied before each test."""
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
async def world(cluster: Cluster, moto: MotoServer, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    moto.reset()  # no instance, image or bucket of an earlier test
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    cluster.env.update(moto.env())
    recording = gpu_recording(tmp_path)
    skip_boot: set[str] = set()

    def start_agent(instance_id: str, endpoint: str) -> Daemon:
        if instance_id in skip_boot or "*" in skip_boot:  # an instance whose agent never comes up
            return Daemon(instance_id, ["sleep", "600"], tmp_path / f"{instance_id}.log").start()
        return cluster.start_agent(instance_id, provider="aws", metadata={"endpoint": endpoint},
                                   spot={"poll_interval": 0.1}, spot_upload_reserve=1.0, docker={"enabled": False},
                                   gpu_recording=str(recording), gpu_sample_interval=0.05)

    async with FakeImds() as imds, BootSimulator(moto.url, imds, start_agent) as sim:
        w = World(cluster, moto, sim, imds)
        w.s3.create_bucket(Bucket="incl-store")
        w.skip_boot = skip_boot  # type: ignore[attr-defined]
        yield w


async def test_a_gpu_job_gets_a_spot_instance_whose_agent_runs_it_and_the_idle_instance_goes(world: World) -> None:
    """Queued GPU job → one spot g5.xlarge tagged for it, user-data naming the cluster's NATS and store → its
    agent registers with the instance's metadata → the job runs there → the idle instance is terminated."""
    world.start_controller()
    job = await world.cluster.submit("echo on $INCL_GPUS; nproc > /dev/null", resources={"gpus": "A10G:1",
                                                                                       "spot": True})
    (instance_id,) = await world.sim.wait_booted(1)
    (inst,) = world.instances()
    assert inst["InstanceType"] == "g5.xlarge" and inst.get("InstanceLifecycle") == "spot"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert (tags["incl:cluster"], tags["incl:job"], tags["incl:attempt"]) == ("t", job.id, "1")
    user_data = world.ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert world.cluster.nats.url in script and "s3://incl-store/t" in script

    done = await world.cluster.wait_done(job.id, timeout=40)
    assert done.state == "SUCCEEDED", done.reason
    att = done.current
    assert (att.agent_id, att.instance_id, att.instance_type, att.market) == (instance_id, instance_id, "g5.xlarge",
                                                                              "spot")
    async with world.cluster.client() as c:
        info = next(a.record.info for a in await c.agents() if a.record.info.agent_id == instance_id)
    assert (info.provider, info.zone, info.address) == ("aws", inst["Placement"]["AvailabilityZone"],
                                                        inst["PrivateIpAddress"])
    await world.sim.wait_gone(instance_id, timeout=30)
    assert world.live() == []


async def test_insufficient_capacity_on_the_first_candidate_uses_the_next(world: World) -> None:
    """g5.xlarge answers InsufficientInstanceCapacity: the provider launches the next candidate, g5.2xlarge."""
    world.sim.proxy.fail["g5.xlarge"] = "InsufficientInstanceCapacity"
    world.start_controller()
    job = await world.cluster.submit("true", resources={"gpus": "A10G:1"})
    await world.sim.wait_booted(1)
    assert [i["InstanceType"] for i in world.live()] == ["g5.2xlarge"]
    assert ("g5.xlarge", None, "InsufficientInstanceCapacity") in world.sim.proxy.runs
    assert (await world.cluster.wait_done(job.id, timeout=40)).state == "SUCCEEDED"


# Checkpoints every step; on SIGTERM it checkpoints the step it is in and exits; resumes from the checkpoint.
TRAIN = """\
import os, signal, sys, time
ckpt = os.path.join(os.environ["INCL_CHECKPOINT_DIR"], "step")
step = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
print(f"attempt {os.environ['INCL_ATTEMPT']} starts at {step} resumed={os.environ['INCL_RESUMED']}", flush=True)
def save(n):
    with open(ckpt + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(ckpt + ".tmp", ckpt)
def on_term(*_):
    save(step)
    print(f"SIGTERM at {step}: checkpointed", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
total = 0
while step < TOTAL:
    step += 1
    print(f"step {step}", flush=True)
    save(step)
    time.sleep(0.05)
out = os.path.join(os.environ["INCL_OUTPUT_DIR"], "final.txt")
open(out, "w").write(f"finished {step}\\n")
print(f"finished {step}", flush=True)
"""


def project(tmp: Path, total: int) -> Path:
    root = tmp / "train"
    root.mkdir(exist_ok=True)
    (root / "train.py").write_text(TRAIN.replace("TOTAL", str(total)))
    return root


def steps(lines: list[bytes]) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith(b"step ")]


async def test_spot_notice_checkpoints_and_the_job_resumes_on_a_new_instance_losing_no_step(
        world: World, tmp_path: Path) -> None:
    """A notice mid-run: SIGTERM reaches the job, its checkpoint is stored, the attempt is PREEMPTED, the old
    instance goes, a new one comes, and the job resumes from that checkpoint and finishes; no step is lost or
    repeated, and both attempts' logs stay readable."""
    world.start_controller()
    job = await world.cluster.submit("python3 train.py", workdir=str(project(tmp_path, 200)),
                                     resources={"spot": True}, checkpoint={"sync_every": "1h"})
    (first,) = await world.sim.wait_booted(1)

    async def past_step_30() -> bool:
        return len(steps(await world.cluster.log_lines(job.id))) >= 30

    await wait_for(past_step_30, 40, "the job to pass step 30")
    world.sim.interrupt(first)

    async def preempted() -> bool:
        return (await world.cluster.job(job.id)).attempts[0].state == "PREEMPTED"

    await wait_for(preempted, 20, "attempt 1 to end PREEMPTED")
    await world.sim.reclaim(first)  # EC2 takes the instance at the deadline
    done = await world.cluster.wait_done(job.id, timeout=60)
    assert done.state == "SUCCEEDED" and [a.state for a in done.attempts] == ["PREEMPTED", "SUCCEEDED"]
    assert done.attempts[1].instance_id not in (None, first)
    one = await world.cluster.log_lines(job.id, attempt=1)
    two = await world.cluster.log_lines(job.id, attempt=2)
    stopped_at = int(one[-1].split()[2].rstrip(b":"))
    assert one[-1].endswith(b"checkpointed") and two[0] == f"attempt 2 starts at {stopped_at} resumed=1".encode()
    assert steps(one) + steps(two) == list(range(1, 201)) and two[-1] == b"finished 200"
    shown = world.cluster.cli("ls", env={"COLUMNS": "200"})
    assert "1 recovered" in shown.stdout, shown.stdout
    detail = world.cluster.cli("show", job.id, env={"COLUMNS": "250"}).stdout
    assert first in detail and done.attempts[1].instance_id in detail and "PREEMPTED" in detail, detail
    assert "spot interruption" in detail


async def test_spot_loss_without_notice_resumes_from_the_last_periodic_checkpoint(
        world: World, tmp_path: Path) -> None:
    """The instance is reclaimed with no notice: heartbeats stop, EC2 says it ended for a spot reason, the
    attempt is PREEMPTED (not LOST), and the job resumes from the last periodic checkpoint."""
    world.start_controller(agent_lost_after=1.5)
    job = await world.cluster.submit("python3 train.py", workdir=str(project(tmp_path, 120)),
                                     resources={"spot": True}, checkpoint={"sync_every": 0.5},
                                     retry={"max_attempts": 1})
    (first,) = await world.sim.wait_booted(1)

    stored = await wait_for(lambda: _stored_step(job.id, at_least=10), 40, "a periodic checkpoint past step 10")
    await world.sim.reclaim(first)
    done = await world.cluster.wait_done(job.id, timeout=60)
    assert done.state == "SUCCEEDED" and [a.state for a in done.attempts] == ["PREEMPTED", "SUCCEEDED"], done.reason
    two = await world.cluster.log_lines(job.id, attempt=2)
    resumed_at = int(two[0].split()[4])
    assert resumed_at >= stored and steps(two) == list(range(resumed_at + 1, 121))


async def _stored_step(job_id: str, at_least: int) -> int | None:
    """The step in the job's checkpoint in the store, once it is at least `at_least`."""
    async with open_store("s3://incl-store/t") as store:
        if await resolve_ref(store, f"jobs/{job_id}/checkpoints") is None:
            return None
        _, manifest = await read_manifest(store, f"jobs/{job_id}/checkpoints")
        entry = next((e for e in manifest.files if e.path == "step"), None)
        step = int(await store.get_bytes(blob_key(entry.digest))) if entry else 0
    return step if step >= at_least else None


async def test_controller_killed_during_provisioning_leaks_nothing_and_launches_nothing_twice(
        world: World) -> None:
    """kill -9 of the controller while it launches for three jobs: after a restart every job runs once, no
    attempt got two instances, and every instance is terminated in the end."""
    controller = world.start_controller()
    jobs = [await world.cluster.submit(f"echo job {i}", resources={"gpus": "A10G:1"}) for i in range(3)]
    await wait_for(lambda: len(world.instances()) >= 1, 20, "a first launch")
    controller.kill()
    world.cluster.controller = None
    world.cluster.start_controller(provider="aws", aws={"endpoint_url": world.sim.ec2_url,
                                                        "ami": world.instances()[0]["ImageId"], "catalog": CATALOG,
                                                        "api_max_attempts": 1},
                                   reconcile={"cluster": "t", "interval": 0.3, "boot_timeout": 8.0,
                                              "idle_timeout": 1.5}, store_url="s3://incl-store/t")
    for job in jobs:
        assert (await world.cluster.wait_done(job.id, timeout=60)).state == "SUCCEEDED"
    per_attempt: dict[tuple[str, str], int] = {}
    for inst in world.instances():
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        key = (tags["incl:job"], tags["incl:attempt"])
        per_attempt[key] = per_attempt.get(key, 0) + 1
    # At most one instance per attempt (a job may also run on another job's idle instance before its own launch)
    assert set(per_attempt) <= {(j.id, "1") for j in jobs} and set(per_attempt.values()) == {1}
    await wait_for(lambda: world.live() == [], 30, "every instance terminated")


async def test_an_instance_that_never_registers_is_terminated_after_the_boot_timeout(world: World) -> None:
    """Its agent never comes up: after `boot_timeout` it is terminated and the attempt gets a new instance."""
    world.skip_boot.add("*")  # type: ignore[attr-defined]
    world.start_controller(reconcile={"boot_timeout": 2.0})
    started = time.time()
    job = await world.cluster.submit("echo finally", resources={"gpus": "A10G:1"})

    async def first_instance() -> str | None:
        live = world.live()
        return live[0]["InstanceId"] if live else None

    dud = await wait_for(first_instance, 20, "a launch")
    world.skip_boot.add(dud)  # type: ignore[attr-defined]
    world.skip_boot.discard("*")  # type: ignore[attr-defined]
    await world.sim.wait_gone(dud, timeout=30)
    assert time.time() - started >= 2.0
    done = await world.cluster.wait_done(job.id, timeout=40)
    assert done.state == "SUCCEEDED" and done.current.instance_id != dud


async def test_a_spot_notice_during_an_hpo_trial_resumes_it_as_the_same_trial(world: World, tmp_path: Path) -> None:
    """A study's one trial runs on a spot instance that gets its notice: the trial's job is PREEMPTED and
    resumes from its checkpoint on a new instance as the same job and the same trial; the study has one trial,
    COMPLETE, with the value the resumed run logged."""
    from incl.cli.files import upload_workdir
    from incl.proto.spec import load_spec
    from incl.proto.studies import STUDY_ENDED, TrialState

    root = project(tmp_path, 150)
    (root / "train.py").write_text((root / "train.py").read_text() + (
        "import incl\nincl.log({'loss': float(os.environ['X']) + step})\n"))
    spec = load_spec({"run": "python3 train.py", "workdir": str(root), "resources": {"spot": True},
                      "checkpoint": {"sync_every": "1h"}, "retry": {"max_attempts": 1},
                      "hpo": {"metric": "loss", "trials": 1, "params": {"X": {"type": "float", "low": 0, "high": 1}}}})
    world.start_controller()
    await world.cluster.wait_controller()
    async with world.cluster.client() as c:
        study = await c.submit_study(spec, user="tester", code=await upload_workdir(c, str(root)))
    (first,) = await world.sim.wait_booted(1)

    async def trial_job() -> str | None:
        async with world.cluster.client() as c:
            jobs = await c.jobs(study=study.id)
        return jobs[0].id if jobs else None

    job_id = await wait_for(trial_job, 20, "the trial's job")

    async def past_step_30() -> bool:
        return len(steps(await world.cluster.log_lines(job_id))) >= 30

    await wait_for(past_step_30, 40, "the trial to pass step 30")
    world.sim.interrupt(first)
    await wait_for(lambda: _attempt_state(world, job_id, "PREEMPTED"), 20, "attempt 1 to end PREEMPTED")
    await world.sim.reclaim(first)

    async def ended() -> object:
        async with world.cluster.client() as c:
            reply = await c.study(study.id)
        return reply if reply.summary.study.state in STUDY_ENDED else None

    done = await wait_for(ended, 90, "the study to end")
    (trial,) = done.trials
    job = await world.cluster.job(job_id)
    assert [a.state for a in job.attempts] == ["PREEMPTED", "SUCCEEDED"]  # max_attempts 1: preemption is free
    assert trial.state is TrialState.COMPLETE and trial.job_id == job_id
    assert trial.value == trial.params["X"] + 150
    assert steps(await world.cluster.log_lines(job_id)) == list(range(1, 151))


async def _attempt_state(world: World, job_id: str, state: str) -> bool:
    return (await world.cluster.job(job_id)).attempts[0].state == state


# --- gangs (multi-node jobs) ------------------------------------------------------------------------------------


def _tags(inst: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in inst["Tags"]}


async def test_a_two_node_gang_gets_two_instances_in_one_placement_group_and_both_ranks_run(world: World) -> None:
    """A 2-node job: one RunInstances of two into a cluster placement group named for its launch, both in one
    zone, tagged with the job, attempt, generation and ranks 0 and 1; their agents register, both ranks run and
    the job SUCCEEDS; then both instances go as idle and the placement group with them."""
    world.start_controller()
    job = await world.cluster.submit("echo rank $NODE_RANK", resources={"gpus": "A10G:1", "nodes": 2})
    booted = await world.sim.wait_booted(2)
    # The ranks are tagged right after the one RunInstances call that launched both (it cannot tag each apart).
    await wait_for(lambda: all("incl:rank" in _tags(i) for i in world.instances()), 10, "the rank tags")
    insts = sorted(world.instances(), key=lambda i: _tags(i)["incl:rank"])
    assert sorted(i["InstanceId"] for i in insts) == sorted(booted)
    assert [(_tags(i)["incl:job"], _tags(i)["incl:attempt"], _tags(i)["incl:generation"], _tags(i)["incl:rank"])
            for i in insts] == [(job.id, "1", "0", "0"), (job.id, "1", "0", "1")]
    assert len({i["Placement"]["AvailabilityZone"] for i in insts}) == 1
    group = f"incl-t-{job.id}-1-0"
    assert {world.sim.proxy.placed[i] for i in booted} == {group}
    assert world.sim.proxy.groups[group]["strategy"] == "cluster"
    assert [(f["MinCount"], f["MaxCount"]) for f in world.sim.proxy.forms] == [("2", "2")]

    done = await world.cluster.wait_done(job.id, timeout=60)
    assert done.state == "SUCCEEDED", done.reason
    assert sorted(n.instance_id for n in done.current.nodes) == sorted(booted)
    assert sorted(await world.cluster.log_lines(job.id)) == [b"rank 0", b"rank 1"]
    await wait_for(lambda: world.live() == [] and world.sim.proxy.groups == {}, 30,
                   "both instances and the placement group gone")


async def test_a_gang_that_came_up_partly_is_terminated_and_launched_whole_elsewhere(world: World) -> None:
    """g5.xlarge gives only one of the gang's two instances: it is terminated at once and the gang launches whole
    on g5.2xlarge; a rank then reclaimed while booting takes the other down and the gang is launched again, whole,
    as generation 1; the job SUCCEEDS and nothing is left."""
    world.sim.proxy.short["g5.xlarge"] = 1
    world.skip_boot.add("*")  # type: ignore[attr-defined]
    world.start_controller(reconcile={"boot_timeout": 30.0})
    job = await world.cluster.submit("echo rank $NODE_RANK", resources={"gpus": "A10G:1", "nodes": 2,
                                                                         "spot": True})

    async def two_running() -> list[dict[str, Any]] | None:
        live = [i for i in world.live() if i["State"]["Name"] == "running" and "incl:rank" in _tags(i)]
        return live if len(live) == 2 else None  # ranks are tagged just after RunInstances

    first = await wait_for(two_running, 20, "the gang's two instances")
    assert {i["InstanceType"] for i in first} == {"g5.2xlarge"}
    (partial,) = [i for i in world.instances() if i["InstanceType"] == "g5.xlarge"]
    assert partial["State"]["Name"] in ("shutting-down", "terminated")
    assert [r[0] for r in world.sim.proxy.runs] == ["g5.xlarge", "g5.2xlarge"]

    world.skip_boot.discard("*")  # type: ignore[attr-defined]
    world.skip_boot.update(i["InstanceId"] for i in first)  # type: ignore[attr-defined]
    reclaimed = next(i["InstanceId"] for i in first if _tags(i)["incl:rank"] == "1")
    world.sim.proxy.interrupted.add(reclaimed)
    world.ec2.terminate_instances(InstanceIds=[reclaimed])
    done = await world.cluster.wait_done(job.id, timeout=60)
    assert done.state == "SUCCEEDED", done.reason
    gens = {(i["InstanceId"], _tags(i)["incl:generation"]) for i in world.instances()
            if i["InstanceType"] == "g5.2xlarge"}
    assert {g for _, g in gens} == {"0", "1"} and len(gens) == 4
    assert {n.instance_id for n in done.current.nodes}.isdisjoint(i["InstanceId"] for i in first)
    await wait_for(lambda: world.live() == [] and world.sim.proxy.groups == {}, 30,
                   "every instance and placement group gone")


async def test_controller_killed_while_launching_a_gang_leaks_nothing(world: World) -> None:
    """kill -9 of the controller as it launches a 2-node gang: after a restart the gang's attempt has exactly
    one generation of two instances, the job SUCCEEDS, and every instance and placement group is gone in the end."""
    ami = world.ec2.register_image(Name="incl-gpu-gang", RootDeviceName="/dev/sda1")["ImageId"]
    controller = world.start_controller(aws={"ami": ami})
    job = await world.cluster.submit("echo rank $NODE_RANK", resources={"gpus": "A10G:1", "nodes": 2})
    await wait_for(lambda: "CreatePlacementGroup" in world.sim.proxy.actions, 20, "the gang's launch to begin")
    controller.kill()
    world.cluster.controller = None
    world.start_controller(aws={"ami": ami})
    done = await world.cluster.wait_done(job.id, timeout=60)
    assert done.state == "SUCCEEDED", done.reason
    mine = [i for i in world.instances() if _tags(i)["incl:job"] == job.id]
    # One generation of two: nothing launched twice. (The kill may fall between the launch and the rank tags,
    # which come in later calls: the ranks then follow the launch index, and some tags may be missing.)
    assert sorted((_tags(i)["incl:attempt"], _tags(i)["incl:generation"]) for i in mine) == [("1", "0"), ("1", "0")]
    ranks = [_tags(i)["incl:rank"] for i in mine if "incl:rank" in _tags(i)]  # each tagged by its own call
    assert len(set(ranks)) == len(ranks) and set(ranks) <= {"0", "1"}
    await wait_for(lambda: world.live() == [] and world.sim.proxy.groups == {}, 30,
                   "every instance and placement group gone")


async def test_efa_on_a_job_no_efa_type_fits_is_refused_at_submit(world: World) -> None:
    """`resources.efa` where every fitting catalog type lacks EFA: SpecInvalid on resources.efa, nothing queued."""
    from incl.proto.errors import SpecInvalid
    world.start_controller()
    with pytest.raises(SpecInvalid) as caught:
        await world.cluster.submit("true", resources={"gpus": "A10G:1", "nodes": 2, "efa": True})
    assert caught.value.field == "resources.efa" and "no instance type that fits has EFA" in str(caught.value)
    assert world.instances() == []


async def test_the_leader_killed_mid_provisioning_its_standby_launches_nothing_twice_and_leaks_nothing(
        world: World) -> None:
    """Two controllers on moto: kill -9 of the leader right after its first launch; the standby takes over
    within the lease, every job runs once, no attempt gets two instances, and every instance goes in the end."""
    from test_standby import lease_holder

    ami = world.ec2.register_image(Name="incl-gpu", RootDeviceName="/dev/sda1")["ImageId"]
    cluster = world.cluster
    common = {**CONTROLLER_CFG, "nats_url": cluster.nats.url, "store_url": "s3://incl-store/t", "provider": "aws",
              "metrics_port": None,
              "aws": {"endpoint_url": world.sim.ec2_url, "ami": ami, "catalog": CATALOG, "api_max_attempts": 1},
              "reconcile": {"cluster": "t", "interval": 0.3, "boot_timeout": 8.0, "idle_timeout": 1.5}}
    daemons = {cid: Daemon(cid, [sys.executable, "-m", "incl.controller", "--config",
                                 str(cluster._config(f"controller-{cid}", {**common, "controller_id": cid}))],
                           cluster.tmp / f"controller-{cid}.log", cluster.env).start() for cid in ("c1", "c2")}
    try:
        async with cluster.client() as client:
            leading = await wait_for(lambda: lease_holder(client.bus), 30, "a leader")
            standby = "c2" if leading == "c1" else "c1"
            jobs = [await cluster.submit(f"echo job {i}", resources={"gpus": "A10G:1"}) for i in range(3)]
            await wait_for(lambda: len(world.instances()) >= 1, 20, "a first launch")
            daemons[leading].kill()
            killed_at = time.monotonic()
            await wait_for(lambda: _holds(client, standby, lease_holder), 15, "the standby to take over")
            took = time.monotonic() - killed_at
            print(f"takeover {took:.2f} s after kill -9 of {leading}")
            assert took <= 5.0 + 1.0  # the lease (2.5 s) and a poll, with the test's margin
        for job in jobs:
            assert (await cluster.wait_done(job.id, timeout=60)).state == "SUCCEEDED", daemons[standby].output()
        per_attempt: dict[tuple[str, str], int] = {}
        for inst in world.instances():
            tags = _tags(inst)
            key = (tags["incl:job"], tags["incl:attempt"])
            per_attempt[key] = per_attempt.get(key, 0) + 1
        assert set(per_attempt) <= {(j.id, "1") for j in jobs} and set(per_attempt.values()) == {1}, per_attempt
        await wait_for(lambda: world.live() == [], 30, "every instance terminated")
    finally:
        for daemon in daemons.values():
            daemon.stop()


async def _holds(client: Any, controller_id: str, holder: Any) -> bool:
    return await holder(client.bus) == controller_id
