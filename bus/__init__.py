"""All of INCL's NATS I/O: the one connect path, request/reply, streams and buckets, durable publish, the consume
loop and retry policy, daemon logging, and the client library (`incl.bus.client.Client`)."""
