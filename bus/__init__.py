"""All of INCL's NATS I/O: the one connect path, request/reply, streams and buckets, durable publish, the consume
loop and retry policy, daemon logging, and the client library (`incl.bus.client.Client`)."""

from incl.bus.deferred import import_nats

import_nats()  # before anything here imports nats-py: without aiohttp, which INCL does not use through it
