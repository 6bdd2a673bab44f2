#!/usr/bin/env bash
# Make .venv hold maskdepth (editable) and its test tools. Fast when nothing changed since the last run.
# torch is installed first and pinned so that pip never swaps in a build with GPU packages behind our back;
# set MASKDEPTH_TORCH (e.g. "torch==2.13.0" or "torch") to choose another.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.maskdepth-installed
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing maskdepth into .venv ..." >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check "${MASKDEPTH_TORCH:-torch==2.13.0}"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi
