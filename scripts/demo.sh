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
"$incl" outputs "$job"
rm -rf "outputs-$job"
"$incl" download "$job" --to "outputs-$job"
echo "The stack is still up: try '$incl ls' and '$incl agents'; stop it with '$incl down'."
