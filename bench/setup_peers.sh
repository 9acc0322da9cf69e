#!/usr/bin/env bash
# Create (idempotently) the isolated virtualenv used only by the peer benchmarks.
# Ray lives here so it never enters the project's test install.
#
#   bash bench/setup_peers.sh            # create/refresh /work/main/.bench-venv
#   BENCH_VENV=/some/dir bash bench/setup_peers.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/.bench-venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
RAY_SPEC="${RAY_SPEC:-ray[default,tune]}"  # tune: bench/ray_tune_peer.py (the HPO overhead peer)
OPTUNA_SPEC="${OPTUNA_SPEC:-optuna}"       # Ray Tune's OptunaSearch

# keep the venv out of git
GI="$ROOT/.gitignore"
if [ -f "$GI" ]; then
    grep -qxF '.bench-venv/' "$GI" || printf '\n.bench-venv/\n' >> "$GI"
else
    printf '.bench-venv/\n' > "$GI"
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

if ! "$VENV/bin/python" -c 'import ray, ray.job_submission, aiohttp, ray.tune, optuna' >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "$RAY_SPEC" "$OPTUNA_SPEC"
fi

"$VENV/bin/python" -c 'import ray, optuna; print("ray", ray.__version__, "optuna", optuna.__version__, "in", __import__("sys").prefix)'
command -v unshare >/dev/null || echo "WARNING: unshare (util-linux) missing; ray_peer.py needs it" >&2
command -v ip >/dev/null || echo "WARNING: ip (iproute2) missing; ray_peer.py needs it" >&2
