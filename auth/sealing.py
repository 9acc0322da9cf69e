"""The keys that keep a job's secret values unreadable outside the one process that needs them.

Two kinds, both PyNaCl (libsodium):

- an **agent key**, X25519 (`nacl.public`): the agent makes it at its first start and keeps it under its work dir;
  it sends the public half when it registers, the controller seals each secret value of an assignment to it
  (`SealedBox`: anyone may seal, only the holder of the private key opens), so that the assignment stream and the
  agent's own copy on disk carry no clear value;
- a **vault key**, symmetric (`nacl.secret.SecretBox`): the controller's, which encrypts the secret values it keeps
  in the job records, so that reading the jobs bucket, or a backup of it, shows no value. Every controller of a
  cluster must read the same key file (a standby that takes over opens the records the leader wrote).

Key files are raw key bytes, mode 0600 from their first byte (`keys.write_private`'s way), created once and then
only read: a restarted agent still opens an assignment it re-adopts, and a restarted controller its records.
"""

from __future__ import annotations

import os
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.secret import SecretBox
from nacl.utils import random


class SealError(Exception):
    """A sealed value could not be opened (another key, or damaged bytes); the message never holds a value."""


def key_file(path: Path, size: int) -> bytes:
    """The `size` bytes in `path`, made (random, mode 0600) when it does not exist yet. Two processes racing to
    make it both end with the one that was written first (O_EXCL)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = random(size)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            data = path.read_bytes()
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
    if len(data) != size:
        raise SealError(f"{path} holds {len(data)} bytes, not a {size}-byte key")
    return data


class AgentKey:
    """An agent's X25519 key pair. `repr` never shows the private half."""

    def __init__(self, private: PrivateKey) -> None:
        self._private = private
        self.public = bytes(private.public_key)

    @classmethod
    def load(cls, path: Path) -> AgentKey:
        """The key kept in `path`, made on first use."""
        return cls(PrivateKey(key_file(path, PrivateKey.SIZE)))

    def open(self, sealed: bytes) -> str:
        try:
            return SealedBox(self._private).decrypt(sealed).decode()
        except (CryptoError, UnicodeDecodeError) as exc:
            raise SealError("a secret sealed to another key (or damaged) could not be opened") from exc

    def __repr__(self) -> str:
        return f"AgentKey(public={self.public.hex()[:16]}..., private=***)"


def seal(public: bytes, value: str) -> bytes:
    """`value` readable only by the holder of the private key to `public` (48 bytes longer)."""
    return SealedBox(PublicKey(public)).encrypt(value.encode())


class Vault:
    """The controller's symmetric key for values at rest. `repr` never shows it."""

    def __init__(self, key: bytes) -> None:
        self._box = SecretBox(key)

    @classmethod
    def load(cls, path: Path) -> Vault:
        """The key kept in `path`, made on first use."""
        return cls(key_file(path, SecretBox.KEY_SIZE))

    def lock(self, value: str) -> bytes:
        """`value` encrypted with a fresh random nonce (40 bytes longer): the same value twice differs."""
        return bytes(self._box.encrypt(value.encode()))

    def unlock(self, data: bytes) -> str:
        try:
            return self._box.decrypt(data).decode()
        except (CryptoError, UnicodeDecodeError) as exc:
            raise SealError("a secret encrypted with another controller key (or damaged) could not be opened; "
                            "every controller must read the same secrets key file") from exc

    def __repr__(self) -> str:
        return "Vault(key=***)"
