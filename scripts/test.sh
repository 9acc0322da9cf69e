#!/usr/bin/env bash
# The whole test suite: installs INCL with its test dependencies into .venv (once), then runs pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_incl dev
exec .venv/bin/python -m pytest "$@"
