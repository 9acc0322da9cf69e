"""Pulling an image, with registry credentials, reporting progress as throttled lines a person reads.

Docker's pull stream says, per layer, "Pulling fs layer", "Downloading" (bytes so far of the layer's size),
"Download complete", "Pull complete" or "Already exists"; `PullTally` sums them into one figure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker
import aiohttp
from rich.filesize import decimal

from incl.agent.docker_spec import ContainerFailure, DockerSettings

Progress = Callable[[str], Awaitable[None]]
DONE = {"Pull complete", "Already exists"}
DOWNLOADED = {"Download complete", "Verifying Checksum", "Extracting", *DONE}


class PullTally:
    """Bytes downloaded of bytes known, and layers done of layers seen."""

    def __init__(self) -> None:
        self._sizes: dict[str, tuple[int, int]] = {}  # layer -> (downloaded, size), once its size is known
        self._layers: set[str] = set()
        self._done: set[str] = set()

    def add(self, event: dict[str, Any]) -> None:
        layer, status = event.get("id"), event.get("status", "")
        detail = event.get("progressDetail") or {}
        if not layer or status.startswith(("Pulling from", "Digest", "Status")):
            return
        self._layers.add(layer)
        if status == "Downloading" and detail.get("total"):
            self._sizes[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        elif status in DOWNLOADED and layer in self._sizes:
            self._sizes[layer] = (self._sizes[layer][1], self._sizes[layer][1])
        if status in DONE:
            self._done.add(layer)

    def line(self, image: str) -> str | None:
        """`pulling IMAGE: 45% of 1.2 GB (3 of 7 layers)`; None before any size is known."""
        got = sum(d for d, _ in self._sizes.values())
        total = sum(s for _, s in self._sizes.values())
        if not total:
            return None
        return (f"pulling {image}: {100 * got // total}% of {decimal(total)} "
                f"({len(self._done)} of {len(self._layers)} layers)")


def registry_ref(image: str) -> str:
    """`image` with its registry host spelled out, which credentials need (`ubuntu` → `docker.io/library/ubuntu`)."""
    first, slash, _ = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return image
    return f"docker.io/{image}" if slash else f"docker.io/library/{image}"


async def pull(docker: aiodocker.Docker, image: str, auth: dict[str, str] | None, progress: Progress,
               settings: DockerSettings) -> None:
    """Pull `image`; every failure becomes a `ContainerFailure` that says what Docker said."""
    loop = asyncio.get_running_loop()
    began = last = loop.time()
    tally, shown = PullTally(), ""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.request_timeout,
                                    sock_read=settings.pull_stall_timeout)
    await progress(f"pulling {image}")
    try:
        async with asyncio.timeout(settings.pull_timeout), contextlib.aclosing(docker.images.pull(  # type: ignore[call-overload]  # aiodocker types timeout as float; it also takes aiohttp's ClientTimeout
                registry_ref(image) if auth else image, auth=auth, stream=True, timeout=timeout)) as events:
            async for event in events:
                tally.add(event)
                line = tally.line(image)
                if line and line != shown and loop.time() - last >= settings.progress_interval:
                    last, shown = loop.time(), line
                    await progress(line)
    except aiohttp.ServerTimeoutError:
        raise ContainerFailure(f"image {image} could not be pulled: no progress for "
                               f"{settings.pull_stall_timeout:g} s") from None
    except TimeoutError:
        raise ContainerFailure(f"image {image} could not be pulled: it took longer than "
                               f"{settings.pull_timeout:g} s") from None
    except aiodocker.DockerError as exc:
        raise ContainerFailure(f"image {image} could not be pulled: {exc.message}") from None
    except aiohttp.ClientError as exc:
        raise ContainerFailure(f"image {image} could not be pulled: lost the Docker engine: {exc}") from None
    await progress(f"pulled {image} in {loop.time() - began:.0f} s")
