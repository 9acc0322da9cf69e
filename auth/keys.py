"""NATS nkeys and the credential files INCL writes: one per identity, mode 0600, in a folder of mode 0700.

A credential file is the identity's nkey seed under a header line naming it (`# incl user alice`), so that a
client given only the file knows whom it speaks for (its request subjects and reply inboxes carry the name). A file
holding a bare seed (as `nk` writes it) is read too; its name then comes from elsewhere.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

HEADER = "# incl"
KINDS = ("user", "agent", "controller")


@dataclass(frozen=True)
class Creds:
    """What a credential file holds. `repr` never shows the seed."""
    kind: str | None
    name: str | None
    seed: str

    def __repr__(self) -> str:
        return f"Creds(kind={self.kind!r}, name={self.name!r}, seed=***)"


def new_seed() -> str:
    """A fresh user nkey seed (`SU...`): 32 random bytes, encoded as NATS encodes seeds."""
    import nkeys  # noqa: PLC0415 - lazy: its crypto library loads only when a key is made, not for `incl --help`
    return str(nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode())


def public_key(seed: str) -> str:
    """The public nkey (`U...`) the server config lists for the holder of `seed`."""
    import nkeys  # noqa: PLC0415 - lazy, as above
    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        return str(pair.public_key.decode())
    finally:
        pair.wipe()


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner may enter (0700), created if missing."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from its first byte (never readable by others, even briefly),
    atomically: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def write_creds(path: Path, kind: str, name: str, seed: str) -> Path:
    private_dir(path.parent)
    write_private(path, f"{HEADER} {kind} {name}\n# Anyone holding this file acts as {kind} {name}: keep it secret.\n"
                        f"{seed}\n")
    return path


def read_creds(path: Path) -> Creds:
    """The seed in `path` and the identity its header names; ValueError if it holds no seed."""
    return parse_creds(path.read_text(), str(path))


def parse_creds(text: str, source: str) -> Creds:
    """The seed in a credential file's `text` and the identity its header names; ValueError naming `source` if it
    holds no seed."""
    kind = name = seed = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(HEADER + " "):
            parts = line.split()
            if len(parts) == 4 and parts[2] in KINDS:
                kind, name = parts[2], parts[3]
        elif line.startswith("SU"):
            seed = line
    if seed is None:
        raise ValueError(f"{source} holds no nkey seed")
    return Creds(kind=kind, name=name, seed=seed)
