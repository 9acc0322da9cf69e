"""The auth callout's test parts: a nats-server rendered by INCL with the callout on, and a throwaway RSA key whose
self-signed certificate stands for AWS's public certificate of the instance identity signature."""

from __future__ import annotations

import datetime
from pathlib import Path

from authstack import AuthNats
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from incl.auth import callout, identities, serverconf

AUTH_TIMEOUT = 1.0  # the server's wait for the callout's answer (kept short: a test waits it out)


def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(key: rsa.RSAPrivateKey, tmp: Path, name: str) -> Path:
    """A self-signed certificate for `key`, written to `tmp/<name>.pem`."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path = tmp / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


class CalloutNats(AuthNats):
    """The server as INCL renders it, with the auth callout on (its issuer made under the home). `auth_timeout`: its
    wait for an answer; a test that needs the callout to answer in time on a loaded host sets it longer."""

    def __init__(self, home: Path, tmp: Path, auth_timeout: float = AUTH_TIMEOUT) -> None:
        self.auth_timeout = auth_timeout
        super().__init__(home, tmp)

    def render(self) -> None:
        issuer = callout.ensure_issuer(callout.issuer_file(self.home))
        serverconf.write(self.conf, identities.load(self.home), host="127.0.0.1", port=self.port,
                         store_dir=self.home / "nats", callout_issuer=issuer,
                         auth_timeout=self.auth_timeout)
