#!/usr/bin/env bash
# Create .venv and install the package with the training and test extras (pinned in pyproject.toml).
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--with-browser]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/progress.sh
. scripts/progress.sh
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  say "creating the virtual environment $VENV ($PYTHON -m venv)"
  "$PYTHON" -m venv "$VENV"
fi
# The compiled featurization loops are built at install: a change to them (or to the build) reinstalls too.
stamp="$VENV/.installed-$(cat pyproject.toml setup.py src/retail_prediction/*/*.pyx src/retail_prediction/*/*.pxd \
  | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing retail-prediction and its pinned dependencies into $VENV (1-3 minutes the first time;" \
      "the featurization loops are compiled)"
  install() {
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e '.[train,dev]'
  }
  with_heartbeat "installing" install
  touch "$stamp"
  say "installed"
else
  say "$VENV is up to date"
fi

if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  # The monitoring tests run Debian's Prometheus and promtool (tests/deploy/test_monitoring.py, test_prometheus.py).
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian's prometheus (prometheus, promtool) for the monitoring tests (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "note: install Debian's prometheus (sudo apt-get install prometheus) to run the monitoring tests" >&2
  fi
fi

if [ "${1:-}" = "--with-browser" ] && ! command -v chromium >/dev/null 2>&1; then
  # The browser tests drive Debian's Chromium (no browser download at test time).
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium for the browser tests (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Debian's chromium (sudo apt-get install chromium) to run the browser tests" >&2
  fi
fi
