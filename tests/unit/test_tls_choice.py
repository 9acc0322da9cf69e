"""Which TLS `incl up` gives the embedded server, kept per home; and the CA `incl login --ca` keeps for the CLI."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from incl.auth import tls
from incl.bus.client import resolve_ca
from incl.cli import stack
from incl.cli.main import cli
from incl.proto.errors import InclError


def test_the_choice_is_kept_until_no_tls(tmp_path: Path) -> None:
    assert stack.choose_tls(tmp_path, tls=None) is None  # a new home: no TLS unless asked
    made = stack.choose_tls(tmp_path, tls=True)
    assert made is not None and made.ca == str(tmp_path / "tls" / "ca.pem")
    assert stack.choose_tls(tmp_path, tls=None) == made  # a later `incl up` keeps it
    assert stack.render_conf(tmp_path, 4999).read_text().count(f'"cert_file": "{made.cert}"') == 1
    assert stack.choose_tls(tmp_path, tls=False) is None and stack.load_tls(tmp_path) is None
    assert "tls:" not in stack.render_conf(tmp_path, 4999).read_text()


def test_a_certificate_of_ones_own_needs_all_three_files(tmp_path: Path) -> None:
    files = tls.ensure(tmp_path / "real")
    with pytest.raises(InclError, match="needs all three"):
        stack.choose_tls(tmp_path, tls=None, cert=files.cert, key=files.key)
    own = stack.choose_tls(tmp_path, tls=None, cert=files.cert, key=files.key, ca=files.ca)
    assert own is not None and (own.cert, own.ca) == (str(files.cert), str(files.ca))
    assert not (tmp_path / "tls").exists()  # no throwaway CA made beside a real one


def test_login_ca_keeps_a_certificate_and_refuses_anything_else(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INCL_TLS_CA", raising=False)
    monkeypatch.setattr("incl.bus.logsetup.configure", lambda level: None)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    refused = CliRunner().invoke(cli, ["login", "--ca", str(junk)])
    assert refused.exit_code == 1 and f"cannot use {junk} as a CA certificate" in refused.output
    assert CliRunner().invoke(cli, ["login"]).exit_code == 1
    ca = tls.ensure(tmp_path / "cluster").ca
    stored = CliRunner().invoke(cli, ["login", "--ca", str(ca)])
    assert stored.exit_code == 0, stored.output
    kept = tmp_path / "home" / "creds" / "ca.pem"
    assert kept.read_text() == ca.read_text() and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert resolve_ca() == kept
    monkeypatch.setenv("INCL_TLS_CA", str(ca))
    assert resolve_ca() == ca and resolve_ca(junk) == junk
