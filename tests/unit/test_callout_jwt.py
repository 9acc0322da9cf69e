"""The callout's JWTs: what `incl.auth.jwt` signs it verifies, and a request's expiry forgives only the configured
clock skew."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from incl.auth import callout, jwt


def test_an_expired_request_is_forgiven_only_the_clock_skew(tmp_path: Path) -> None:
    issuer = callout.ensure_issuer(tmp_path / "issuer.nk")
    account_seed = callout.read_issuer(tmp_path / "issuer.nk")
    fresh = jwt.encode({"sub": "U", "exp": int(time.time()) + 5}, account_seed)
    assert jwt.decode(fresh)["iss"] == issuer
    late = jwt.encode({"sub": "U", "exp": int(time.time()) - 1}, account_seed)  # a whole second truncated away
    with pytest.raises(jwt.InvalidJwt, match="expired"):
        jwt.decode(late)
    assert jwt.decode(late, leeway=2.0)["sub"] == "U"
    stale = jwt.encode({"sub": "U", "exp": int(time.time()) - 10}, account_seed)
    with pytest.raises(jwt.InvalidJwt, match="expired"):
        jwt.decode(stale, leeway=2.0)
    forged = late.rsplit(".", 1)[0] + "." + fresh.rsplit(".", 1)[1]
    with pytest.raises(jwt.InvalidJwt, match="signature"):
        jwt.decode(forged, leeway=2.0)
