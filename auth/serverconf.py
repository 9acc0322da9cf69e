"""The nats-server configuration INCL renders: where it listens and stores, and who may connect with what rights.

Static authorization (each identity's public nkey and its permissions, `incl.auth.permissions`) in a file the server
reads at start and again on a reload signal: revoking an identity is re-rendering this file and reloading, with no
operator or account tooling to run, and connecting never depends on the controller being up.
"""

from __future__ import annotations

import json
from pathlib import Path

from incl.auth import keys
from incl.auth.identities import Registry
from incl.auth.permissions import permissions


def render(registry: Registry, *, host: str, port: int, store_dir: Path, server_name: str = "incl") -> str:
    """The configuration text. Values are written as JSON, which nats-server's configuration format accepts."""
    users = [{"nkey": i.public_key, "permissions": permissions(i)} for i in registry.identities]
    return "\n".join([
        "# Rendered by INCL from $INCL_HOME/auth/identities.json; change identities with `incl admin user`.",
        f"server_name: {json.dumps(server_name)}",
        f"host: {json.dumps(host)}",
        f"port: {port}",
        f"jetstream: {{store_dir: {json.dumps(str(store_dir))}}}",
        f"authorization: {{users: {json.dumps(users, indent=2)}}}",
        "",
    ])


def write(path: Path, registry: Registry, *, host: str, port: int, store_dir: Path) -> Path:
    """Render into `path` (mode 0600: it lists who may connect)."""
    keys.private_dir(path.parent)
    keys.write_private(path, render(registry, host=host, port=port, store_dir=store_dir))
    return path
