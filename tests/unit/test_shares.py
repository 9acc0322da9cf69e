"""Share links' pure parts: a token's signature, the target rule, durations, and a share's state over time."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from incl.controller.shares import load_key, sign, verified_id
from incl.proto.errors import BadRequest
from incl.proto.shares import Share, SharedTree, ShareTarget, check_target, parse_duration

KEY = b"k" * 32


def test_only_the_keys_own_signature_of_a_well_formed_id_verifies() -> None:
    share_id = "sh-0123456789abcdef"
    token = f"{share_id}.{sign(KEY, share_id)}"
    assert verified_id(KEY, token) == share_id
    assert verified_id(b"x" * 32, token) is None  # another cluster's key
    signature = token.split(".")[1]
    for bad in [share_id, f"{share_id}.", f"{share_id}.{signature[:-1]}", f"{share_id}.{signature}x",
                f"sh-0123456789abcdee.{signature}", f"../{share_id}.{signature}", f"{share_id}.{signature}\u00e9", ""]:
        assert verified_id(KEY, bad) is None, bad
    assert len(signature) == 43 and "=" not in signature  # all 256 bits, URL-safe


def test_the_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "controller" / "share.key"
    key = load_key(path)
    assert len(key) == 32 and load_key(path) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("24h", 86400),
                                               ("7d", 604800), ("2w", 1209600), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1h", "forever", "1y", "h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_duration(text)


@pytest.mark.parametrize("target", [ShareTarget(), ShareTarget(job_id="j-1", model="m", version=1),
                                    ShareTarget(model="m"), ShareTarget(model="m", version=1, path="x"),
                                    ShareTarget(job_id="j-1", path="x" * 2000)])
def test_a_target_names_one_job_or_one_model_version(target: ShareTarget) -> None:
    with pytest.raises(BadRequest):
        check_target(target)


def test_a_share_is_active_until_it_expires_or_is_revoked() -> None:
    share = Share(id="sh-0123456789abcdef", kind="folder", target=ShareTarget(job_id="j-1", path="ckpt/best/"),
                  trees=[SharedTree(folder="", digest="0" * 64)], created_by="ann", created_at=100.0,
                  expires_at=200.0)
    assert [share.state(t) for t in (150.0, 199.9, 200.0)] == ["active", "active", "expired"]
    assert Share(**{**{f: getattr(share, f) for f in share.__struct_fields__}, "revoked": True}).state(150) == "revoked"
    assert share.name == "best" and str(share.target) == "j-1:ckpt/best/"
