#!/usr/bin/env bash
# The whole test suite: installs INCL with its test dependencies into .venv (once), lints (ruff), type-checks (mypy,
# scripts/typecheck.sh), then runs pytest; it stops at the first step that fails.
# Extra arguments go to pytest (e.g. `scripts/test.sh tests/unit -x`). The slowest tests are listed at the end;
# docs/testing.md says how long each part takes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_incl dev
.venv/bin/ruff check .
scripts/typecheck.sh
# Two workers (pytest-xdist): most end-to-end tests wait on the clock (leases, heartbeats, back-offs) more than
# they compute. INCL_TEST_WORKERS=0 runs in one process; conftest keeps each file, and the Docker tests, whole.
exec .venv/bin/python -m pytest -n "${INCL_TEST_WORKERS:-2}" --dist loadgroup --durations=15 "$@"
