#!/usr/bin/env bash
# The main job: train a model if none exists, then serve it on http://127.0.0.1:${PORT:-8000}/
#   data: $DATA_DIR if set, else the real LGSR weeks beside the repo (../shared/data/lgsr),
#         else synthetic weeks generated in the same schema.
set -euo pipefail
cd "$(dirname "$0")/.."
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
  why=$(load_error "$MODEL")
  if [ -n "$why" ]; then
    echo "run.sh: $MODEL cannot be served by this version ($why); kept as $MODEL.unusable, training a new one" >&2
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
      retail-prediction generate --out "$DATA" --weeks 30 --customers 5000 --seed 1
    fi
  fi
  mkdir -p "$(dirname "$MODEL")"
  retail-prediction train --data "$DATA" --out "$MODEL"
fi
export MODEL_URI=${MODEL_URI:-$MODEL}
exec retail-prediction serve
