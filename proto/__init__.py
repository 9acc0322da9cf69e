"""The wire contract shared by the controller, the agents and the CLI.

`incl.proto` imports nothing of the other parts. It holds the message structs (MessagePack on the wire),
subject and stream names, the protocol version, the job spec and the error codes.
"""

PROTOCOL_VERSION = 1
