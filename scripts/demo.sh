#!/usr/bin/env bash
# From a fresh clone (Python >= 3.11): install INCL into .venv, start the embedded stack (NATS with
# JetStream, the controller, two local agents), run the example training job, follow its logs, show its
# metrics. The stack stays up afterwards; stop it with `.venv/bin/incl down`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_incl all
incl=.venv/bin/incl

"$incl" up
job=$("$incl" submit -f examples/train/incl.yaml)
echo "submitted $job; following its logs"
"$incl" logs --follow "$job"
"$incl" show "$job"
"$incl" metrics "$job"
echo
echo "Outputs of $job: $(.venv/bin/python -c 'import os; print(os.path.expanduser(os.environ.get("INCL_HOME", "~/.incl")))')/agents/*/jobs/$job/outputs"
echo "The stack is still up: try '$incl ls' and '$incl agents'; stop it with '$incl down'."
