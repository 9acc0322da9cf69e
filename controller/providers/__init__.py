"""Providers: where agents run (`base.Provider`). `open_provider(cfg)` is the one place a provider is chosen,
by the config's `provider` name; a second cloud is a new module here, one line in `PROVIDERS`, and its name
(with its own config section) in `ControllerConfig`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from incl.controller.providers.base import LaunchedInstance, LaunchFailed, Provider
from incl.controller.providers.local import LocalProvider

if TYPE_CHECKING:
    from incl.controller.config import ControllerConfig

__all__ = ["PROVIDERS", "LaunchFailed", "LaunchedInstance", "Provider", "open_provider"]

def _aws(cfg: ControllerConfig) -> Provider:
    # Imported here: aiobotocore and botocore are a fifth of a controller's start-up, and only EC2 needs them.
    from incl.controller.providers.aws import AwsProvider  # noqa: PLC0415

    return AwsProvider.from_config(cfg)


PROVIDERS: dict[str, Callable[[ControllerConfig], Provider]] = {
    "local": LocalProvider.from_config,
    "aws": _aws,
}


def open_provider(cfg: ControllerConfig) -> Provider:
    """The configured provider, not yet entered: `async with open_provider(cfg) as provider:` is its lifespan."""
    return PROVIDERS[cfg.provider](cfg)
