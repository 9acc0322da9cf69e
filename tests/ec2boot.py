"""EC2 for end-to-end tests: instances launched in moto boot as real agent processes with their own metadata.

moto runs no machines and serves no instance metadata; `BootSimulator` plays that part of EC2, as one task in the
test's event loop:

- every `poll` seconds it reads moto's DescribeInstances. An instance that is `running` (moto starts instances at
  once) and has not booted gets an IMDSv2 endpoint in the fake (`tests/imds.py`) with what moto launched: id,
  type, availability zone, `spot` or `on-demand`, private IP. Then `start_agent(instance_id, endpoint)`, which the
  test supplies, starts its agent: a real `python -m incl.agent`, as user-data does on EC2, e.g.
  `cluster.start_agent(instance_id, provider="aws", metadata={"endpoint": endpoint}, ...)`.
- an instance it booted that moto reports `shutting-down` or `terminated` (the controller terminated it) loses its
  agent to SIGKILL: the machine is gone. The agent's jobs die with it (the launcher's parent-death signal).
- `interrupt(instance_id)` posts a spot interruption notice in the fake (the agent's spot watcher reads it) and
  returns its deadline; `reclaim(instance_id)` is EC2 taking a spot instance back with no notice: the agent is
  killed, and the instance is terminated and reported with the state reason `Server.SpotInstanceTermination`.

That state reason cannot come from moto: its TerminateInstances always records `Client.UserInitiatedShutdown`,
nothing under `/moto-api/` sets a reason (its state manager drives other services' transitions), and its model
lives in the server process. So the simulator puts `tests/ec2proxy.py`'s real HTTP proxy in front of moto and adds
each reclaimed id to the proxy's `interrupted`, which it rewrites in DescribeInstances: a controller that must see
reclamations talks to `sim.ec2_url`, not to moto. The simulator itself reads moto directly.

    async with FakeImds() as imds, BootSimulator(moto.url, imds, start_agent) as sim:
        ...  # a controller whose `aws.endpoint_url` is sim.ec2_url launches instances
        first, = await sim.wait_booted(1)

On exit the simulator kills every agent it booted that still runs: the fake EC2 goes away with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from datetime import datetime
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from conftest import Daemon
from ec2proxy import Ec2Proxy
from imds import FakeImds, Instance
from motoserver import AWS_ENV

StartAgent = Callable[[str, str], Daemon]  # (instance id, metadata endpoint) -> its agent, started

GONE = frozenset({"shutting-down", "terminated"})
_CLIENT = AioConfig(connect_timeout=2.0, read_timeout=5.0, retries={"mode": "standard", "total_max_attempts": 2})


class BootSimulator:
    """`async with BootSimulator(moto_url, imds, start_agent) as sim:` — see the module's docstring."""

    def __init__(self, moto_url: str, imds: FakeImds, start_agent: StartAgent, *, poll: float = 0.1,
                 region: str = "us-east-1") -> None:
        self.moto_url, self.imds, self.start_agent, self.poll, self.region = moto_url, imds, start_agent, poll, region
        self.proxy = Ec2Proxy(moto_url)
        self.booted: dict[str, Daemon] = {}  # instance id -> its agent, in boot order
        self.boot_times: dict[str, float] = {}  # instance id -> when its agent was started (epoch seconds)
        self.endpoints: dict[str, str] = {}  # instance id -> its metadata endpoint
        self.gone: set[str] = set()  # booted instances whose machine is gone: terminated or reclaimed
        self.error: BaseException | None = None  # what stopped the simulator (start_agent failing, say)
        self._changed = asyncio.Condition()
        self._stack = AsyncExitStack()
        self._ec2: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ec2_url(self) -> str:
        """The EC2 endpoint to give a controller: moto, with reclaimed instances' state reason rewritten."""
        return self.proxy.url

    async def __aenter__(self) -> BootSimulator:
        async with AsyncExitStack() as stack:
            self._ec2 = await stack.enter_async_context(get_session().create_client(
                "ec2", region_name=self.region, endpoint_url=self.moto_url, config=_CLIENT,
                aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                aws_session_token=AWS_ENV["AWS_SESSION_TOKEN"]))
            await stack.enter_async_context(self.proxy)
            self._stack = stack.pop_all()
        self._task = asyncio.create_task(self._run(), name="ec2boot")
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                with suppress(asyncio.CancelledError):
                    await self._task  # raises what stopped the simulator, if something did
        finally:
            for agent in self.booted.values():
                agent.kill()
            await self._stack.aclose()

    # --- what a test does -----------------------------------------------------------------------------------

    async def wait_booted(self, n: int, timeout: float = 20.0) -> list[str]:
        """Wait until `n` instances have booted; returns the ids of all booted so far, in boot order."""
        await self._wait(lambda: len(self.booted) >= n, timeout, f"{n} instances to boot")
        return list(self.booted)

    async def wait_gone(self, instance_id: str, timeout: float = 20.0) -> Daemon:
        """Wait until the simulator has seen `instance_id` terminated and killed its agent; returns the agent."""
        await self._wait(lambda: instance_id in self.gone, timeout, f"instance {instance_id} to go")
        return self.booted[instance_id]

    def interrupt(self, instance_id: str, action: str = "terminate") -> datetime:
        """Post a spot interruption notice for `instance_id` (as EC2 does two minutes ahead); returns its deadline."""
        self._require_spot(instance_id)
        return datetime.fromisoformat(self.imds.notice(instance_id, action))

    async def reclaim(self, instance_id: str) -> None:
        """EC2 takes the spot instance back without a notice: its agent dies at once (SIGKILL), and the instance
        reads terminated with the state reason `Server.SpotInstanceTermination` (through `ec2_url`)."""
        self._require_spot(instance_id)
        self.proxy.interrupted.add(instance_id)
        await self._shut_down(instance_id)
        await self._ec2.terminate_instances(InstanceIds=[instance_id])

    # --- the machines -------------------------------------------------------------------------------------

    def _require_spot(self, instance_id: str) -> None:
        if instance_id not in self.booted:
            raise KeyError(f"instance {instance_id} has not booted")
        if self.imds.instances[instance_id].lifecycle != "spot":
            raise ValueError(f"instance {instance_id} is on-demand: EC2 interrupts only spot instances")

    async def _run(self) -> None:
        try:
            while True:
                try:
                    instances = await self._describe()
                except (BotoCoreError, ClientError):  # moto restarting (a fault test): read again next time
                    instances = []
                for i in instances:
                    await self._step(i)
                await asyncio.sleep(self.poll)
        except Exception as exc:
            self.error = exc
            await self._notify()
            raise

    async def _describe(self) -> list[dict[str, Any]]:
        pages = self._ec2.get_paginator("describe_instances").paginate()
        return [i async for page in pages for r in page["Reservations"] for i in r["Instances"]]

    async def _step(self, i: dict[str, Any]) -> None:
        instance_id, state = i["InstanceId"], i["State"]["Name"]
        if state == "running" and instance_id not in self.booted:
            await self._boot(i)
        elif state in GONE and instance_id in self.booted and instance_id not in self.gone:
            await self._shut_down(instance_id)

    async def _boot(self, i: dict[str, Any]) -> None:
        instance_id = i["InstanceId"]
        endpoint = await self.imds.add(Instance(
            instance_id=instance_id, instance_type=i["InstanceType"],
            availability_zone=i["Placement"]["AvailabilityZone"],
            lifecycle="spot" if i.get("InstanceLifecycle") == "spot" else "on-demand",
            local_ipv4=i["PrivateIpAddress"]))
        self.endpoints[instance_id] = endpoint
        self.boot_times[instance_id] = time.time()
        self.booted[instance_id] = self.start_agent(instance_id, endpoint)
        await self._notify()

    async def _shut_down(self, instance_id: str) -> None:
        self.gone.add(instance_id)
        self.booted[instance_id].kill()  # nothing if the test killed it already
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: self.error is not None or check())
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                 f"(booted: {list(self.booted)}, gone: {sorted(self.gone)})") from None
        if self.error is not None:
            raise RuntimeError("the boot simulator stopped") from self.error
