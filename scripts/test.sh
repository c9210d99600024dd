#!/usr/bin/env bash
# The whole test suite: lint, then pytest (real S3 server, real browser, real processes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --with-browser
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check src tests benchmarks scripts
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
