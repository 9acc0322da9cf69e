"""`incl up`'s embedded server asks the controllers' auth callout about unknown clients when the home's controller
config turns it on (EC2 instances joining a stack a user started), and only then."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from incl.auth import callout
from incl.cli import stack


def test_the_callout_block_follows_the_controller_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCL_HOME", str(tmp_path))
    cfg = tmp_path / "controller.yaml"
    cfg.write_text(yaml.safe_dump({"store_url": f"file://{tmp_path / 'store'}"}))
    assert "auth_callout" not in stack.render_conf(tmp_path, 4999).read_text()
    cfg.write_text(yaml.safe_dump({"store_url": f"file://{tmp_path / 'store'}", "callout": {"enabled": False}}))
    assert "auth_callout" not in stack.render_conf(tmp_path, 4999).read_text()
    cfg.write_text(yaml.safe_dump({"store_url": f"file://{tmp_path / 'store'}", "callout": {"enabled": True}}))
    rendered = stack.render_conf(tmp_path, 4999).read_text()
    issuer = callout.ensure_issuer(callout.issuer_file(tmp_path))  # made by the render, read back here
    assert "auth_callout" in rendered and issuer in rendered
    assert (callout.issuer_file(tmp_path).stat().st_mode & 0o777) == 0o600


def test_a_controller_with_a_bad_callout_config_says_so_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "controller.yaml"
    cfg.write_text(yaml.safe_dump({"callout": {"enabled": True, "aws_certificates": [str(tmp_path / "none.pem")],
                                               "issuer_seed": str(tmp_path / "issuer.nk")}}))
    done = subprocess.run([sys.executable, "-m", "incl.controller", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error: callout.aws_certificates: cannot read a PEM certificate from " \
                                  f"{tmp_path / 'none.pem'}: [Errno 2] No such file or directory: " \
                                  f"'{tmp_path / 'none.pem'}'", done.stderr
