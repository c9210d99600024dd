#!/usr/bin/env bash
# The whole test suite: lint, then pytest (real S3 server, real browser, real processes). No data needed: the
# tests generate their weeks; those of the real LGSR weeks run too when ../shared/data/lgsr or $LGSR_DATA holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/progress.sh
. scripts/progress.sh
scripts/setup.sh --with-browser
# shellcheck disable=SC1091
. .venv/bin/activate
say "lint (ruff)"
ruff check src tests benchmarks scripts
say "pytest (about 4 minutes on 2 cores)"
python -m pytest -q -p no:cacheprovider --durations=15 "$@"
