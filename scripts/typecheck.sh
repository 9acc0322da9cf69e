#!/usr/bin/env bash
# mypy over the `incl` package. The repository keeps the design card's top-level folders (sdk/ is `incl`, proto/ is
# `incl.proto`, ...: [tool.setuptools.package-dir]), and the editable install maps them with an import hook that
# mypy cannot follow, so this builds the same layout from symlinks under build/ and checks it as `-p incl`.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck
rm -rf "$tree" && mkdir -p "$tree/incl"
root=$PWD
for f in sdk/*; do ln -s "$root/$f" "$tree/incl/"; done
for d in proto bus controller agent cli artifacts hpo auth web; do ln -s "$root/$d" "$tree/incl/$d"; done
# Errors name the real files (sdk/_sdk.py, agent/app.py), not the links.
MYPYPATH=$tree .venv/bin/mypy --config-file pyproject.toml -p incl "$@" \
  | sed -E "s#^$tree/incl/(proto|bus|controller|agent|cli|artifacts|hpo|auth|web)/#\\1/#; s#^$tree/incl/#sdk/#"
