"""The throwaway CA and server certificate `incl up --tls` makes: names, modes, kept across calls, verifiable."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
from pathlib import Path

from conftest import NATS_SERVER
from cryptography import x509

from incl.auth import identities, serverconf, tls


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_server_certificate_names_loopback_this_host_and_the_extra_names(tmp_path: Path) -> None:
    files = tls.ensure(tmp_path, ["nats.example.org", "10.0.0.7"])
    names = tls.subject_names(files.cert)
    assert {"localhost", "127.0.0.1", "::1", socket.gethostname(), "nats.example.org", "10.0.0.7"} == set(names)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    assert cert.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_keys_are_private_and_the_files_are_kept_on_the_second_call(tmp_path: Path) -> None:
    first = tls.ensure(tmp_path)
    for path in (first.key, tmp_path / "tls" / "ca.key", first.cert, first.ca):
        assert mode(path) == 0o600, path
    assert mode(tmp_path / "tls") == 0o700
    before = {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()}
    assert tls.ensure(tmp_path) == first
    assert {p.name: p.read_bytes() for p in (tmp_path / "tls").iterdir()} == before


def test_a_new_name_reissues_the_server_certificate_under_the_same_ca(tmp_path: Path) -> None:
    first = tls.ensure(tmp_path)
    ca, cert = first.ca.read_bytes(), first.cert.read_bytes()
    again = tls.ensure(tmp_path, ["nats.example.org"])
    assert again.ca.read_bytes() == ca and again.cert.read_bytes() != cert
    assert "nats.example.org" in tls.subject_names(again.cert)


def test_python_s_ssl_verifies_the_server_certificate_against_the_ca(tmp_path: Path) -> None:
    """The same check a client makes (chain and host name), done in memory: it passes for the names and fails for
    another CA."""
    files = tls.ensure(tmp_path / "a")
    other = tls.ensure(tmp_path / "b")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert, files.key)
    assert _handshake(server, files.ca, "127.0.0.1") is None
    assert _handshake(server, files.ca, "localhost") is None
    assert "certificate verify failed" in str(_handshake(server, other.ca, "127.0.0.1"))
    assert "certificate verify failed" in str(_handshake(server, files.ca, "elsewhere.example.org"))


def _handshake(server: ssl.SSLContext, ca: Path, hostname: str) -> ssl.SSLError | None:
    client = ssl.create_default_context(cafile=str(ca))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, into in ((c, c_out, s_in), (s, s_out, c_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                if side is c:
                    return exc
            into.write(out.read())
        try:
            c.do_handshake()
            s.do_handshake()
            return None
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError as exc:
            return exc
    raise AssertionError("no handshake")


def test_nats_server_accepts_the_rendered_configuration_with_tls(tmp_path: Path) -> None:
    identities.add(tmp_path, "controller", "controller")
    files = tls.ensure(tmp_path)
    conf = serverconf.write(tmp_path / "auth" / "nats.conf", identities.load(tmp_path), host="127.0.0.1", port=4999,
                            store_dir=tmp_path / "store", tls=files, tls_timeout=3.0)
    assert f'"cert_file": "{files.cert}"' in conf.read_text() and '"timeout": 3.0' in conf.read_text()
    checked = subprocess.run([str(NATS_SERVER), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
