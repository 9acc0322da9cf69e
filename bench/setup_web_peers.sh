#!/usr/bin/env bash
# The venv of bench/web_ui.py's peers (TensorBoard and MLflow's UI), apart from the project's: they run as
# their own processes, so their dependencies never meet INCL's. The same packages as the `bench` extra.
#
#   bash bench/setup_web_peers.sh                 # create/refresh .peers/ at the repository root
#   PEERS_VENV=/some/dir bash bench/setup_web_peers.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.peers}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import tensorboard, mlflow' >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "tensorboard>=2.16" "mlflow>=3.0"
fi
"$VENV/bin/python" -c 'import tensorboard, mlflow; print("tensorboard", tensorboard.__version__, "mlflow", mlflow.__version__)'
