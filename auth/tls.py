"""A throwaway certificate authority and the NATS server's certificate it signs, kept under `$INCL_HOME/tls/`.

For `incl up --tls` on a machine without a real certificate: clients verify the server against `ca.pem` (the CLI,
the daemons and instances are given that file), so the CA's key never leaves this machine and the server's key
never leaves the server. Made once and kept, like the identities: clients given `ca.pem` keep trusting the server
across restarts. A server certificate that lacks a name asked for later is issued again by the same CA (clients
need nothing new). Keys are ECDSA P-256 (fast to make, accepted everywhere), written mode 0600.

Files: `ca.pem` (the CA certificate, public), `ca.key`, `server.pem`, `server.key`.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from incl.auth import keys

CA_DAYS = 3650
SERVER_DAYS = 825  # the most a server certificate may be valid for and still be accepted by macOS and browsers


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS server is configured with (`cert`, `key`) and what its clients verify it against (`ca`)."""
    cert: Path
    key: Path
    ca: Path


def tls_dir(home: Path) -> Path:
    return home / "tls"


def default_names(extra: Iterable[str] = ()) -> list[str]:
    """The names a local server answers to: loopback in every spelling, this host's name, then `extra`."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *extra]
    return list(dict.fromkeys(n for n in names if n))


def ensure(home: Path, extra_names: Iterable[str] = ()) -> TlsFiles:
    """The CA and server certificate under `home/tls/`, made on first use and kept; the server certificate is issued
    again (by the kept CA) only when it lacks one of the names wanted now."""
    folder = keys.private_dir(tls_dir(home))
    files = TlsFiles(cert=folder / "server.pem", key=folder / "server.key", ca=folder / "ca.pem")
    ca_key_file = folder / "ca.key"
    if not (files.ca.exists() and ca_key_file.exists()):
        new_key, new_cert = make_ca(f"INCL local CA ({socket.gethostname()})")
        keys.write_private(ca_key_file, _key_pem(new_key))
        keys.write_private(files.ca, _cert_pem(new_cert))
        files.cert.unlink(missing_ok=True)  # signed by a CA that is gone
    names = default_names(extra_names)
    if files.cert.exists() and files.key.exists() and set(names) <= set(subject_names(files.cert)):
        return files
    ca_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
    server_key, server_cert = make_server_cert(ca_key, ca_cert, names)
    keys.write_private(files.key, _key_pem(server_key))
    keys.write_private(files.cert, _cert_pem(server_cert))
    return files


def make_ca(common_name: str, days: int = CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign server certificates and nothing below them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: list[str],
                     days: int = SERVER_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server certificate for `names` (DNS names or IP addresses), signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (_builder(subject, ca_cert.subject, key.public_key(), days)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def subject_names(cert_file: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for, as text."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # a client whose clock is a little behind
            .not_valid_after(now + datetime.timedelta(days=days)))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
