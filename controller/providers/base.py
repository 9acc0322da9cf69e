"""The seam between the controller and where its agents run: what the provisioner (the reconcile loop), the
liveness check and the submit-time fit check ask of a provider.

    Provider            a protocol; one module per provider (`local`, `aws`), chosen by the config's `provider`
    LaunchFailed        a launch made no instance; the message says why (shown on the job while it waits)
    LaunchedInstance    what a launch made (or found already made for the same job, attempt and generation):
                        one per rank of a gang, all or none

A provider is its own lifespan: `async with provider:` holds its clients (the EC2 client) and releases them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Self

import msgspec

from incl.controller.reconcile import Launch, Market, ObservedGroup, ObservedInstance
from incl.proto.messages import Resources
from incl.proto.spec import Resources as Wanted


class LaunchFailed(Exception):
    """No instance was launched; the message says why."""


class LaunchedInstance(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    instance_type: str
    market: Market
    subnet_id: str | None = None
    availability_zone: str | None = None
    existing: bool = False  # True: an instance launched earlier for this job and attempt
    rank: int = 0  # its rank in a gang (0 for a single-node job)
    placement_group: str | None = None


class Provider(Protocol):
    @property
    def provisions(self) -> bool:
        """True: instances come and go with demand, so the reconcile loop runs; False: agents are started by hand."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def shapes(self) -> list[Resources]:
        """Every machine shape it could ever launch (submit-time admission: "can this job ever fit?")."""
        ...

    async def describe(self, cluster: str) -> list[ObservedInstance]:
        """Every instance of the cluster, in any state (ended ones while the cloud still shows them)."""
        ...

    def refusal(self, want: Wanted) -> str | None:
        """Why a job asking for `want` could never be launched here, beyond its shape (None: it could)."""
        ...

    async def launch(self, launch: Launch) -> list[LaunchedInstance]:
        """`launch.nodes` instances (rank order), or those made earlier for it: all or none. Raises `LaunchFailed`."""
        ...

    async def placement_groups(self, cluster: str) -> list[ObservedGroup]:
        """The cluster's placement groups (made for gangs)."""
        ...

    async def delete_placement_groups(self, cluster: str, names: Sequence[str]) -> list[str]:
        """Delete those of `names` that are the cluster's and empty; returns their names."""
        ...

    async def terminate(self, cluster: str, instance_ids: Sequence[str]) -> list[str]:
        """Terminate those of `instance_ids` that belong to the cluster; returns their ids."""
        ...

    async def spot_interrupted(self, instance_ids: Sequence[str]) -> dict[str, bool]:
        """For each id: True if the cloud reclaimed it as a spot instance (False if not, or unknown)."""
        ...
