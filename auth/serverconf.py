"""The nats-server configuration INCL renders: where it listens and stores, and who may connect with what rights.

Static authorization (each identity's public nkey and its permissions, `incl.auth.permissions`) in a file the server
reads at start and again on a reload signal: revoking an identity is re-rendering this file and reloading, with no
operator or account tooling to run, and connecting never depends on the controller being up.

The JetStream store is encrypted at rest (ChaCha20-Poly1305, nats-server's own `cipher`/`key`) with a key kept in
`jetstream.key` next to this file, mode 0600, made the first time the file is rendered. A home whose configuration
was rendered before (an unencrypted store, perhaps a server running now) gets no key here: a reload cannot change
the encryption settings of a running server, so this never makes one behind its back. Deleting the rendered file
before the next `incl up` makes the key; nats-server 2.15 then encrypts the existing store as it starts.

With a certificate (`incl.auth.tls`), the server requires TLS of every client: one that does not speak TLS, or does
not trust the certificate, never gets as far as presenting its credentials.

With an auth callout issuer (`incl.auth.callout`), every client the registry does not name (an EC2 agent with its
instance identity document) is sent to the controllers to decide; the registry's identities are its `auth_users`,
so they connect as before, even while no controller answers. `auth_timeout`: seconds the server waits for a client's
credentials, and for the callout's answer.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from incl.auth import keys
from incl.auth.identities import Registry
from incl.auth.permissions import permissions

if TYPE_CHECKING:
    from incl.auth.tls import TlsFiles  # not at run time: `cryptography` loads only where certificates are made

STORE_KEY = "jetstream.key"


def render(registry: Registry, *, host: str, port: int, store_dir: Path, server_name: str = "incl",
           store_key: str | None = None, tls: TlsFiles | None = None, tls_timeout: float = 5.0,
           callout_issuer: str | None = None, auth_timeout: float = 2.0) -> str:
    """The configuration text. Values are written as JSON, which nats-server's configuration format accepts.
    `store_key`: encrypt the JetStream store with it (None: unencrypted). `tls`: require TLS of clients, with this
    certificate and key; `tls_timeout`: seconds a client has to finish its TLS handshake. `callout_issuer`: the
    account public key (`A...`) that signs the callout's answers (None: no callout)."""
    users = [{"nkey": i.public_key, "permissions": permissions(i)} for i in registry.identities]
    authorization: dict[str, object] = {"users": users}
    if callout_issuer is not None:
        authorization["timeout"] = auth_timeout
        authorization["auth_callout"] = {"issuer": callout_issuer,
                                         "auth_users": [i.public_key for i in registry.identities]}
    jetstream = f"store_dir: {json.dumps(str(store_dir))}"
    if store_key is not None:
        jetstream += f", cipher: chachapoly, key: {json.dumps(store_key)}"
    return "\n".join([
        "# Rendered by INCL from $INCL_HOME/auth/identities.json; change identities with `incl admin user`.",
        f"server_name: {json.dumps(server_name)}",
        f"host: {json.dumps(host)}",
        f"port: {port}",
        f"jetstream: {{{jetstream}}}",
        *([_tls_block(tls, tls_timeout)] if tls is not None else []),
        f"authorization: {json.dumps(authorization, indent=2)}",
        "",
    ])


def _tls_block(tls: TlsFiles, timeout: float) -> str:
    block = {"cert_file": str(tls.cert), "key_file": str(tls.key), "timeout": timeout}
    return f"tls: {json.dumps(block)}"


def write(path: Path, registry: Registry, *, host: str, port: int, store_dir: Path, tls: TlsFiles | None = None,
          tls_timeout: float = 5.0, callout_issuer: str | None = None, auth_timeout: float = 2.0) -> Path:
    """Render into `path` (mode 0600: it lists who may connect and holds the store's key)."""
    keys.private_dir(path.parent)
    store_key = _store_key(path.parent / STORE_KEY, first_render=not path.exists())
    keys.write_private(path, render(registry, host=host, port=port, store_dir=store_dir, store_key=store_key, tls=tls,
                                    tls_timeout=tls_timeout, callout_issuer=callout_issuer,
                                    auth_timeout=auth_timeout))
    return path


def _store_key(key_file: Path, *, first_render: bool) -> str | None:
    """The store's key: the one kept, or a new one on a first render, or None (a home from before: see above)."""
    if key_file.exists():
        return key_file.read_text().strip()
    if not first_render:
        return None
    key = secrets.token_hex(32)  # 256 bits; nats-server derives its key-encryption key from it
    keys.write_private(key_file, key + "\n")
    return key
