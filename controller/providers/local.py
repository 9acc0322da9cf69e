"""The `local` provider: agents are started by hand or by `incl up`, so there is nothing to launch, describe or
terminate, no shape beyond the agents' own (and the config's `provider_shapes`), and no spot instance."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from incl.controller.providers.base import LaunchedInstance, LaunchFailed
from incl.controller.reconcile import Launch, ObservedGroup, ObservedInstance
from incl.proto.messages import Resources
from incl.proto.spec import Resources as Wanted

if TYPE_CHECKING:
    from incl.controller.config import ControllerConfig


class LocalProvider:
    provisions = False

    @classmethod
    def from_config(cls, cfg: ControllerConfig) -> LocalProvider:
        return cls()

    async def __aenter__(self) -> LocalProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def shapes(self) -> list[Resources]:
        return []

    async def describe(self, cluster: str) -> list[ObservedInstance]:
        return []

    def refusal(self, want: Wanted) -> str | None:
        return None

    async def launch(self, launch: Launch) -> list[LaunchedInstance]:
        raise LaunchFailed("the local provider launches no instances: start an agent")

    async def placement_groups(self, cluster: str) -> list[ObservedGroup]:
        return []

    async def delete_placement_groups(self, cluster: str, names: Sequence[str]) -> list[str]:
        return []

    async def terminate(self, cluster: str, instance_ids: Sequence[str]) -> list[str]:
        return []

    async def spot_interrupted(self, instance_ids: Sequence[str]) -> dict[str, bool]:
        return dict.fromkeys(instance_ids, False)
