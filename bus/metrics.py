"""Prometheus metrics of INCL's daemons: one registry per daemon, and the HTTP endpoint its lifespan serves.

Each daemon makes a `DaemonMetrics` (its own `CollectorRegistry`, never the library's global one, so two
daemons in one process or test never collide), installs its bus counts (`incl.bus.probe`), and serves
`/metrics` with `serving(...)` inside its lifespan: the endpoint opens and closes with the daemon, on its event
loop, so what a scrape reads is never changed under it by another thread. Names, types and labels:
docs/observability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator

import structlog
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from incl.proto.telemetry import GpuTelemetry

log = structlog.get_logger()

REQUEST_MAX_BYTES = 8 * 1024  # a scrape's request line and headers; anything longer is not a scrape

Scrape = Callable[[], Awaitable[None]]


class DaemonMetrics:
    """A daemon's registry, with what the bus's loops count (`incl.bus.probe.Counts`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._retries = Counter("incl_retries", "Tries again after a transient NATS failure, by operation "
                                "(publishes, requests, fetches: `what` in incl.bus.retry.forever)", ["what"],
                                registry=self.registry)
        self._applied = Counter("incl_messages_applied", "Messages from a durable work queue handled and acked: "
                                "agent events on the controller, assignments on an agent", ["source"],
                                registry=self.registry)
        self._parked = Counter("incl_messages_parked", "Messages that could not be decoded or handled, kept in the "
                               "dead-letter stream", ["source"], registry=self.registry)

    def retried(self, what: str) -> None:
        self._retries.labels(what).inc()

    def parked(self, source: str) -> None:
        self._parked.labels(source).inc()

    def applied(self, source: str) -> Callable[[], None]:
        self._parked.labels(source)  # shown as 0 from the start: a rate over it then works from the first park
        return self._applied.labels(source).inc


class GpuUtilization:
    """`incl_gpu_utilization_percent{agent, gpu}`: each GPU's mean utilization over its last heartbeat window,
    read at scrape time from `readings` (agent id, its last telemetry). A GPU that gave no reading is absent."""

    NAME = "incl_gpu_utilization_percent"

    def __init__(self, readings: Callable[[], Iterable[tuple[str, GpuTelemetry | None]]]) -> None:
        self._readings = readings

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.NAME, "GPU utilization (0-100), mean over the agent's last heartbeat window",
                                 labels=["agent", "gpu"])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for agent_id, telemetry in self._readings():
            for gpu in telemetry.gpus if telemetry is not None else ():
                if gpu.util_gpu_mean is not None:
                    family.add_metric([agent_id, str(gpu.index)], gpu.util_gpu_mean)
        yield family


@contextlib.asynccontextmanager
async def serving(registry: CollectorRegistry, host: str, port: int | None, *, before_scrape: Scrape | None = None,
                  timeout: float = 10.0) -> AsyncIterator[int | None]:
    """Serve `registry` at http://host:port/metrics until the block ends; yields the bound port. No port (None
    or 0) serves nothing and yields None. A port that cannot be bound is logged and served nothing either: the
    daemon's work matters more than its metrics. `before_scrape` refreshes what is read over the network (at
    most `timeout` seconds for a whole scrape)."""
    server = await _listen(registry, host, port, before_scrape, timeout) if port else None
    if server is None:
        yield None
        return
    async with server:
        bound = server.sockets[0].getsockname()[1]
        log.info("metrics_serving", host=host, port=bound)
        yield bound


async def _listen(registry: CollectorRegistry, host: str, port: int, before_scrape: Scrape | None,
                  timeout: float) -> asyncio.Server | None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                status, body = await _respond(head, registry, before_scrape)
                writer.write(b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                             % (status, CONTENT_TYPE_PLAIN_0_0_4.encode(), len(body)) + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the scraper went away, or sent no request we serve: nothing to answer
        finally:
            writer.close()

    try:
        return await asyncio.start_server(answer, host, port, limit=REQUEST_MAX_BYTES)
    except OSError as exc:
        log.warning("metrics_port_unavailable", host=host, port=port, error=str(exc))
        return None


async def _respond(head: bytes, registry: CollectorRegistry, before_scrape: Scrape | None) -> tuple[bytes, bytes]:
    """The status and body for one request (its request line and headers)."""
    method, _, rest = head.partition(b" ")
    path = rest.partition(b" ")[0].partition(b"?")[0]
    if method != b"GET":
        return b"405 Method Not Allowed", b"GET /metrics\n"
    if path != b"/metrics":
        return b"404 Not Found", b"metrics are at /metrics\n"
    if before_scrape is not None:
        try:
            await before_scrape()
        except Exception as exc:  # noqa: BLE001 - what could not be refreshed keeps its last value
            log.warning("metrics_refresh_failed", error=repr(exc))
    return b"200 OK", generate_latest(registry)
