#!/usr/bin/env bash
# Set-up of benchmarks/compare/run.py: the load tool (Debian's wrk) and the two other systems' venvs (PyPI).
# Our API runs from the project's own venv (. .venv/bin/activate; pip install -e '.[train,dev]').
set -euo pipefail
MLSERVER_VENV=${MLSERVER_VENV:-/tmp/mlserver-venv}
REFERENCE_VENV=${REFERENCE_VENV:-/tmp/reference-venv}
PYTHON=${PYTHON:-python3}

apt-get update -qq
apt-get install -y -qq --no-install-recommends wrk >/dev/null

# Seldon MLServer with its LightGBM runtime, in its own venv. uvloop is pinned below 0.22: with 0.23 (what pip
# picks) MLServer 1.7.1's inference worker dies at start ("RuntimeError: There is no current event loop in
# thread 'MainThread'" from asyncio.get_event_loop() in mlserver/parallel/worker.py) and the server exits.
[ -x "$MLSERVER_VENV/bin/mlserver" ] || {
  "$PYTHON" -m venv "$MLSERVER_VENV"
  "$MLSERVER_VENV/bin/pip" install -q mlserver==1.7.1 mlserver-lightgbm==1.7.1 uvloop==0.21.0
}

# The hand-built reference app (FastAPI + pandas + scikit-learn), plus py-spy for profiling. scikit-learn is
# pinned to the project's version: the driver reloads the forest in the project venv to compute the expected
# answers.
[ -x "$REFERENCE_VENV/bin/uvicorn" ] || {
  "$PYTHON" -m venv "$REFERENCE_VENV"
  "$REFERENCE_VENV/bin/pip" install -q fastapi==0.165.0 'uvicorn[standard]==0.54.0' pandas==3.1.1 \
    scikit-learn==1.9.1 joblib==1.6.0 numpy==2.4.6 py-spy==0.4.3 pyinstrument==5.1.3
}
echo "ok: wrk, $MLSERVER_VENV, $REFERENCE_VENV"
