"""An EC2 instance's signed identity document as a NATS connect token, and its verification.

IMDSv2 serves `/latest/dynamic/instance-identity/document` (JSON: instanceId, accountId, region, ...) and
`.../signature`: the document's bytes signed by AWS (RSA PKCS#1 v1.5, SHA-256), verifiable with AWS's public
certificate for the region. An agent on EC2 connects with both as its token, `incl-iid1.<document>.<signature>`
(each base64url without padding: the document exactly as served, since the signature covers its bytes); the auth
callout (`incl.auth.callout`) verifies it and learns which instance is connecting.

The token proves only that AWS issued the document to some instance; whoever reads it can replay it, as whoever
reads a credential file can use it. It is readable on the instance alone (IMDS, hop limit 1: not from its
containers) and travels inside the NATS connection (TLS when the server has a certificate); the callout also
refuses an instance the controller did not launch or that has terminated, which bounds a replay to the life of
that one instance and the rights of its own agent id.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:  # `cryptography` loads where tokens are verified (the controller), not on every agent import
    from cryptography.x509 import Certificate

PREFIX = "incl-iid1"
MAX_TOKEN = 8192  # an identity document is under 1 KiB; anything larger is not one


class Refused(ValueError):
    """The token is not a genuine identity document. Its message never quotes the token."""


class Document(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The fields of an identity document INCL checks (AWS's has more; they are ignored)."""
    instance_id: str
    account_id: str
    region: str
    availability_zone: str = ""
    instance_type: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Strict: a character outside the base64url alphabet is an error (the standard library skips it by default)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def token(document: str, signature: str) -> str:
    """The connect token for `document` (as IMDS served it) and its base64 `signature` (as IMDS served it)."""
    try:
        raw = base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError):
        raise Refused("the instance identity signature is not base64") from None
    return f"{PREFIX}.{_b64(document.encode())}.{_b64(raw)}"


def is_token(text: str) -> bool:
    return text.startswith(PREFIX + ".")


def load_certificate(path: Path) -> Certificate:
    """AWS's public certificate for the instance identity signature (PEM), as AWS publishes it per region."""
    from cryptography import x509  # noqa: PLC0415 - see above

    return x509.load_pem_x509_certificate(path.read_bytes())


def verify(text: str, certificates: list[Certificate]) -> Document:
    """The document in token `text`, once its signature verifies against one of `certificates`. Refused otherwise."""
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - see above
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: PLC0415

    if len(text) > MAX_TOKEN:
        raise Refused(f"the token is {len(text)} bytes, more than an identity document's {MAX_TOKEN}")
    parts = text.split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise Refused(f"not an instance identity token (expected {PREFIX}.<document>.<signature>)")
    try:
        document, signature = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise Refused("the instance identity token is not base64url") from None
    for certificate in certificates:
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            continue
        try:
            key.verify(signature, document, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        break
    else:
        raise Refused("the instance identity signature does not verify against AWS's certificate")
    try:
        return msgspec.json.decode(document, type=Document)
    except msgspec.ValidationError as exc:
        raise Refused(f"the signed identity document lacks a field INCL needs: {exc}") from None
    except msgspec.DecodeError:
        raise Refused("the signed identity document is not JSON") from None

