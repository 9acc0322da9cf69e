"""The callout's view of what the controller launched: one describe serves many connects, a new instance is found
without waiting out the cache, and instances not ours cost EC2 at most one describe per `refresh_min`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from imds import FakeClock

from incl.auth.callout import Launched


@dataclass
class Observed:
    instance_id: str
    state: str


class Ec2:
    def __init__(self) -> None:
        self.states: dict[str, str] = {"i-1": "running"}
        self.describes = 0

    async def describe(self) -> list[Observed]:
        self.describes += 1
        await asyncio.sleep(0.01)
        return [Observed(i, s) for i, s in self.states.items()]


async def test_one_describe_serves_connects_until_it_is_stale() -> None:
    ec2, clock = Ec2(), FakeClock(0.0)
    launched = Launched(ec2.describe, ttl=5.0, refresh_min=1.0, clock=clock)
    assert [await launched.state("i-1") for _ in range(3)] == ["running"] * 3 and ec2.describes == 1
    ec2.states["i-1"] = "terminated"
    clock.advance(5.0)
    assert await launched.state("i-1") == "terminated" and ec2.describes == 2


async def test_a_new_instance_is_looked_for_afresh_but_strangers_at_most_once_per_refresh_min() -> None:
    ec2, clock = Ec2(), FakeClock(0.0)
    launched = Launched(ec2.describe, ttl=60.0, refresh_min=1.0, clock=clock)
    assert await launched.state("i-1") == "running"
    clock.advance(1.0)
    ec2.states["i-2"] = "pending"  # launched since the last describe
    assert await launched.state("i-2") == "pending" and ec2.describes == 2
    for _ in range(5):  # another account's instance, over and over
        assert await launched.state("i-stranger") is None
    assert ec2.describes == 2
    clock.advance(1.0)
    assert await launched.state("i-stranger") is None and ec2.describes == 3


async def test_concurrent_lookups_share_one_describe() -> None:
    ec2 = Ec2()
    launched = Launched(ec2.describe, ttl=5.0, clock=FakeClock(0.0))
    assert await asyncio.gather(*(launched.state("i-1") for _ in range(10))) == ["running"] * 10
    assert ec2.describes == 1
