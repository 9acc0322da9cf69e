#!/usr/bin/env bash
# The whole test suite: installs INCL with its test dependencies into .venv (once), then runs pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh tests/unit -x`). The slowest tests are listed at the end;
# docs/testing.md says how long each part takes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_incl dev
exec .venv/bin/python -m pytest --durations=15 "$@"
