"""The identity registry, credential files and the nats-server configuration rendered from them."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from conftest import NATS_SERVER

from incl.auth import identities, keys, serverconf
from incl.auth.identities import Identity
from incl.auth.permissions import permissions


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_identity_s_seed_is_written_private_and_names_its_holder(tmp_path: Path) -> None:
    path = identities.add(tmp_path, "user", "bob", teams=["nlp", "nlp", "cv"])
    assert path == tmp_path / "creds" / "user-bob.nk"
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert mode(identities.registry_file(tmp_path)) == 0o600
    held = keys.read_creds(path)
    assert (held.kind, held.name) == ("user", "bob") and held.seed.startswith("SU")
    assert held.seed not in repr(held)
    bob = identities.load(tmp_path).find("user", "bob")
    assert bob is not None and bob.public_key == keys.public_key(held.seed) and bob.teams == ["cv", "nlp"]
    assert held.seed not in identities.registry_file(tmp_path).read_text()  # the registry holds public keys only


def test_a_bare_seed_file_is_read_without_a_name(tmp_path: Path) -> None:
    (tmp_path / "x.nk").write_text(keys.new_seed() + "\n")
    assert keys.read_creds(tmp_path / "x.nk").name is None
    (tmp_path / "y.nk").write_text("nothing\n")
    with pytest.raises(ValueError, match="no nkey seed"):
        keys.read_creds(tmp_path / "y.nk")


def test_add_refuses_a_duplicate_and_a_name_no_subject_can_carry(tmp_path: Path) -> None:
    identities.add(tmp_path, "user", "bob")
    with pytest.raises(ValueError, match="exists already"):
        identities.add(tmp_path, "user", "bob")
    with pytest.raises(ValueError, match="cannot name an identity"):
        identities.add(tmp_path, "user", "john.doe")


def test_remove_forgets_the_key_and_deletes_its_file(tmp_path: Path) -> None:
    path = identities.add(tmp_path, "user", "bob")
    assert identities.remove(tmp_path, "user", "bob")
    assert not path.exists() and identities.load(tmp_path).find("user", "bob") is None
    assert not identities.remove(tmp_path, "user", "bob")


def test_ensure_keeps_an_existing_identity_and_remakes_a_half_made_one(tmp_path: Path) -> None:
    first = keys.read_creds(identities.ensure(tmp_path, "agent", "local-0")).seed
    assert keys.read_creds(identities.ensure(tmp_path, "agent", "local-0")).seed == first
    identities.creds_file(tmp_path, "agent", "local-0").unlink()
    again = keys.read_creds(identities.ensure(tmp_path, "agent", "local-0")).seed
    assert again != first and len(identities.load(tmp_path).of_kind("agent")) == 1


def _allowed(identity: Identity, what: str) -> list[str]:
    return list(permissions(identity)[what]["allow"])


def test_a_user_may_ask_only_as_themselves_and_read_only_logs_metrics_and_journals() -> None:
    pub = _allowed(Identity(kind="user", name="bob", public_key="U"), "publish")
    assert "incl.api.user.bob.>" in pub
    assert not [s for s in pub if s.startswith(("incl.api.user.alice", "incl.events", "incl.assign", "$KV", ">"))]
    assert not [s for s in pub if "KV_" in s or "INCL_ASSIGN" in s or "INCL_EVENTS" in s]
    assert _allowed(Identity(kind="user", name="bob", public_key="U"), "subscribe") == ["_INBOX.u.bob.>"]


def test_an_agent_may_consume_only_its_own_assignments() -> None:
    pub = _allowed(Identity(kind="agent", name="a1", public_key="U"), "publish")
    assert {"incl.api.agent.a1.>", "incl.events.a1", "$JS.ACK.INCL_ASSIGN.agent-a1.>",
            "$JS.API.CONSUMER.CREATE.INCL_ASSIGN.agent-a1.incl.assign.a1"} <= set(pub)
    assert not [s for s in pub if "a2" in s or s.startswith(("incl.api.user", "$KV", ">"))]
    assert _allowed(Identity(kind="agent", name="a1", public_key="U"), "subscribe") == ["_INBOX.a.a1.>"]


def test_nats_server_accepts_the_rendered_configuration(tmp_path: Path) -> None:
    for kind, name in (("controller", "controller"), ("user", "alice"), ("agent", "a1")):
        identities.add(tmp_path, kind, name)
    conf = serverconf.write(tmp_path / "auth" / "nats.conf", identities.load(tmp_path), host="127.0.0.1", port=4999,
                            store_dir=tmp_path / "store")
    assert mode(conf) == 0o600
    checked = subprocess.run([str(NATS_SERVER), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_admin_user_ls_lists_every_identity_without_a_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from incl.cli.main import cli
    monkeypatch.setenv("INCL_HOME", str(tmp_path))
    # In-process, the CLI's structlog set-up would hide later tests' logs from capture_logs (as in test_cli_study).
    monkeypatch.setattr("incl.bus.logsetup.configure", lambda level: None)
    identities.add(tmp_path, "user", "ann", teams=["vision"], admin=True)
    path = identities.add(tmp_path, "agent", "local-0")
    result = CliRunner().invoke(cli, ["admin", "user", "ls"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[1:]]
    assert [row[:2] for row in rows] == [["user", "ann"], ["agent", "local-0"]]
    assert rows[0][2:4] == ["vision", "yes"] and rows[1][2] == "-"
    assert keys.read_creds(path).seed not in result.output


def test_login_keeps_the_file_private_and_the_client_then_speaks_as_its_user(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from incl.bus.client import Client, login_file, resolve_creds
    from incl.cli.main import cli
    monkeypatch.setenv("INCL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("INCL_CREDS", raising=False)
    monkeypatch.setattr("incl.bus.logsetup.configure", lambda level: None)  # see the test above
    given = identities.add(tmp_path / "admin", "user", "bob")
    result = CliRunner().invoke(cli, ["login", "--creds", str(given)])
    assert result.exit_code == 0 and "logged in as bob" in result.output, result.output
    assert resolve_creds() == login_file() and mode(login_file()) == 0o600
    assert Client("nats://127.0.0.1:1").user == "bob"
    (tmp_path / "junk.nk").write_text("not a key\n")
    refused = CliRunner().invoke(cli, ["login", "--creds", str(tmp_path / "junk.nk")])
    assert refused.exit_code == 1 and "holds no nkey seed" in refused.output
