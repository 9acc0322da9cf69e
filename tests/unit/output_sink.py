"""A job's output collected in memory, for tests that drive the process runtime directly."""

from __future__ import annotations

import asyncio

from incl.proto.messages import Stream


class Output:
    def __init__(self) -> None:
        self.data = b""
        self.grew = asyncio.Event()

    async def sink(self, stream: Stream, chunk: bytes) -> None:
        self.data += chunk
        self.grew.set()

    async def until(self, text: bytes) -> None:
        while text not in self.data:
            self.grew.clear()
            await self.grew.wait()
