#!/usr/bin/env bash
# Make .venv hold maskdepth (editable) and its test tools. Fast when nothing changed since the last run.
# torch is installed first and pinned so that pip never swaps in a build with GPU packages behind our back;
# set MASKDEPTH_TORCH (e.g. "torch==2.13.0" or "torch") to choose another.
# Also: onnxruntime-web from npm into web/node_modules (for `maskdepth export --web`), and, when run as root on a
# Debian-like system, the chromium package for the browser tests (MASKDEPTH_NO_BROWSER=1 skips it). Either one
# missing only skips the tests that need it.
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

web_stamp=web/node_modules/.package-lock.json  # npm writes it on every install
if [ ! -f "$web_stamp" ] || [ web/package-lock.json -nt "$web_stamp" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "installing onnxruntime-web into web/node_modules ..." >&2
    npm ci --prefix web --no-audit --no-fund --loglevel=error >&2 \
      || echo "warning: npm ci in web/ failed; export --web and its browser test will not run" >&2
  else
    echo "note: npm not found; export --web and its browser test will not run (install Node.js and npm)" >&2
  fi
fi

if [ -z "${MASKDEPTH_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the browser tests ..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium fonts-dejavu-core >/dev/null; } \
      || echo "warning: apt-get could not install chromium; the browser tests will be skipped" >&2
  else
    echo "note: chromium not found; the browser tests will be skipped (apt-get install chromium)" >&2
  fi
fi
