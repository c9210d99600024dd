#!/usr/bin/env bash
# The main job: train a model if none exists, then serve it on http://127.0.0.1:${PORT:-8000}/
#   data: $DATA_DIR if set, else the real LGSR weeks beside the repo (../shared/data/lgsr),
#         else synthetic weeks generated in the same schema.
# Each step is said on stderr with the seconds since the start; the server's log is text at a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/progress.sh
. scripts/progress.sh
say "setting up .venv (scripts/setup.sh)"
scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate

MODEL=${MODEL_PATH:-models/model.tar.gz}
load_error() {  # empty when this version can serve the archive (one of an older feature spec cannot)
  python -c 'import sys
from retail_prediction.serving.predictor import Predictor
try:
    Predictor.load(sys.argv[1])
except Exception as exc:
    print(exc)' "$1"
}
if [ -z "${MODEL_URI:-}${MODEL_BUCKET:-}" ] && [ -f "$MODEL" ]; then
  say "checking the model $MODEL"
  why=$(load_error "$MODEL")
  if [ -n "$why" ]; then
    say "$MODEL cannot be served by this version ($why); kept as $MODEL.unusable, training a new one"
    mv "$MODEL" "$MODEL.unusable"
  fi
fi
if [ -z "${MODEL_URI:-}${MODEL_BUCKET:-}" ] && [ ! -f "$MODEL" ]; then
  DATA=${DATA_DIR:-}
  if [ -z "$DATA" ] && [ -d ../shared/data/lgsr ]; then
    DATA=../shared/data/lgsr
  fi
  if [ -z "$DATA" ]; then
    DATA=var/synthetic
    if [ ! -d "$DATA" ]; then
      say "no data given (DATA_DIR) nor found (../shared/data/lgsr): generating 30 synthetic weeks in $DATA"
      retail-prediction generate --out "$DATA" --weeks 30 --customers 5000 --seed 1
    fi
  fi
  mkdir -p "$(dirname "$MODEL")"
  say "training a model on $DATA into $MODEL (a few minutes on the full LGSR data)"
  retail-prediction train --data "$DATA" --out "$MODEL"
fi
export MODEL_URI=${MODEL_URI:-$MODEL}
say "serving $MODEL_URI on port ${PORT:-8000}: the server says the address to open (Ctrl+C stops it)"
exec retail-prediction serve
