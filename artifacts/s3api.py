"""The aiobotocore S3 client, built once per store from StoreConfig (imported lazily: see s3store.py)."""

from __future__ import annotations

import functools
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.loaders import Loader, create_loader

from incl.artifacts.config import StoreConfig


async def make_client(stack: AsyncExitStack, endpoint_url: str | None, cfg: StoreConfig) -> Any:
    config = Config(
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        max_pool_connections=cfg.max_concurrency,
        retries={"total_max_attempts": 1},  # one retry policy, ours (s3retry.py), not two stacked
        parameter_validation=False,  # our calls are fixed in code; checking each against the model costs CPU
        # We send each body's SHA-256 ourselves and check every download against its SHA-256, so botocore
        # need not compute a CRC on top of that.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = get_session()
    session.register_component("data_loader", _loader())
    return await stack.enter_async_context(
        session.create_client("s3", endpoint_url=endpoint_url, region_name=cfg.region, config=config))


@functools.cache
def _loader() -> Loader:
    """One per process: it caches the parsed S3 API model, which a new session would spend ~0.1 s reloading."""
    return create_loader()
