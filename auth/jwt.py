"""NATS JWTs: claims signed with an Ed25519 nkey (`alg: ed25519-nkey`), as nats-server reads and writes them.

A JWT is `<header>.<claims>.<signature>`, each base64url without padding; the header is
`{"typ": "JWT", "alg": "ed25519-nkey"}`, the signature is the issuer's Ed25519 signature of `<header>.<claims>`, and
the issuer (`iss`) is the public nkey that signed it. The claims NATS defines sit under `nats`, with their `type` and
`version: 2`.

Written here (about forty lines over `nkeys` and PyNaCl, both dependencies already) rather than with PyJWT: PyJWT
knows no `ed25519-nkey` algorithm, so it would need a custom algorithm class over these same keys, and its checks
(`exp`, `aud`) would still have to be matched to what nats-server expects; a new dependency for no saved code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class InvalidJwt(ValueError):
    """Not a NATS JWT, or its signature does not verify against its issuer."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: a character outside the base64url alphabet is an error (the standard library skips it by default)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def public_key_bytes(public_key: str) -> bytes:
    """The 32 bytes of an Ed25519 public nkey (`U...`, `A...`, `N...`), its prefix and checksum checked."""
    try:
        raw = base64.b32decode(public_key)
    except (binascii.Error, ValueError):
        raise InvalidJwt(f"not an nkey: {public_key[:60]!r}") from None
    if len(raw) != 35 or not nkeys.valid_public_prefix_byte(raw[0]) or \
            nkeys.crc16(bytearray(raw[:-2])) != int.from_bytes(raw[-2:], "little"):
        raise InvalidJwt(f"not a public nkey: {public_key[:60]!r}")
    return raw[1:33]


def encode(claims: dict[str, Any], seed: str) -> str:
    """`claims` signed by the holder of `seed`, who becomes their issuer; `iat` and `jti` are added."""
    pair = nkeys.from_seed(bytearray(seed.encode()))
    try:
        body = {**claims, "iat": int(time.time()), "iss": pair.public_key.decode(), "jti": ""}
        body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
                                       ).decode().rstrip("=")
        signed = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(body).encode())}"
        return f"{signed}.{_b64(pair.sign(signed.encode()))}"
    finally:
        pair.wipe()


def decode(token: str, leeway: float = 0.0) -> dict[str, Any]:
    """The claims of `token`, once its signature verifies against its own issuer and it has not expired (`leeway`:
    seconds of clock skew forgiven). The caller checks that the issuer is one it trusts. InvalidJwt otherwise."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidJwt("a JWT has three parts")
    try:
        header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise InvalidJwt("a part of the JWT is not base64url JSON") from None
    if not isinstance(header, dict) or header.get("alg") != HEADER["alg"] or not isinstance(claims, dict):
        raise InvalidJwt(f"not an ed25519-nkey JWT (header {str(header)[:80]})")
    issuer = claims.get("iss")
    if not isinstance(issuer, str):
        raise InvalidJwt("the JWT names no issuer")
    try:
        nacl.signing.VerifyKey(public_key_bytes(issuer)).verify(f"{parts[0]}.{parts[1]}".encode(), signature)
    except (nacl.exceptions.BadSignatureError, ValueError) as exc:
        raise InvalidJwt(f"the JWT's signature does not verify against its issuer {issuer}") from exc
    expires = claims.get("exp")
    if isinstance(expires, int | float) and expires and expires + leeway < time.time():
        raise InvalidJwt("the JWT has expired")
    return claims
