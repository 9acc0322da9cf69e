"""`incl --help` and `incl <cmd> --help` stay lean: no NATS client, structlog, S3 client or Optuna is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("nats", "structlog", "aiobotocore", "botocore", "optuna")

PROBE = """
import sys
from incl.cli.main import cli
try:
    cli.main(sys.argv[1:], prog_name="incl", standalone_mode=False)
except SystemExit:
    pass
print("loaded:", *[m for m in {heavy!r} if m in sys.modules])
"""


@pytest.mark.parametrize("args", [["--help"], ["submit", "--help"], ["status", "--help"], ["download", "--help"],
                                  ["study", "--help"], ["gc", "--help"],
                                  ["share", "--help"]])
def test_help_imports_none_of_the_heavy_libraries(args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "Usage:" in out  # the help itself was printed
    assert out.splitlines()[-1] == "loaded:", out


NATS_PROBE = """
import sys
import incl.bus.connection
print("aiohttp" in sys.modules)
import aiohttp  # what the S3 client uses: still importable, in full
print(aiohttp.ClientSession.__name__)
"""


def test_the_nats_client_comes_without_aiohttp_which_stays_importable() -> None:
    """nats-py imports aiohttp only for WebSocket servers, which INCL does not use; that import was half of a short
    command's start-up (`incl.bus.deferred`)."""
    out = subprocess.run([sys.executable, "-c", NATS_PROBE], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert out == ["False", "ClientSession"]


def test_a_controller_without_ec2_does_not_import_the_aws_sdk() -> None:
    """aiobotocore and botocore were a fifth of every controller's start-up, local ones included."""
    probe = ("import sys, incl.controller.app, incl.controller.__main__; "
             "print(*[m for m in ('aiobotocore', 'botocore') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", out.stdout
