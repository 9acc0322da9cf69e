# Sourced by demo.sh and test.sh: `install_incl EXTRA` makes .venv (Python >= 3.11) and installs INCL[EXTRA].
install_incl() {
  local py=${PYTHON:-python3}
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "INCL needs Python >= 3.11" >&2; exit 1; }
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$1]"
}
