"""How fast could /predict be at one connection if featurizing cost nothing? (an experiment, not a test)

    python benchmarks/featurization_bound.py --model models/model.tar.gz [--seconds 5] [--rounds 2]

Starts our server twice per round on 127.0.0.1 and drives POST /predict with `wrk -c1` (real baskets):
  real      the server as shipped;
  constant  the same server with `Predictor.score` replaced by ONNX Runtime on one fixed feature row
            (validation, the HTTP stack, the micro-batcher, ONNX Runtime and the answer are unchanged; the
            code lookups and the featurization are skipped, so its answers are WRONG on purpose).
The gap between the two is what the lookups and the featurization cost inside a real request, where they
run with cold caches; MLServer, which is sent precomputed features, never pays it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from api_load import DEFAULT_DATA, WRK_SCRIPT, Server, run_wrk, sample_baskets

# Run in the server process (python -c) for the "constant" variant.
_CONSTANT_FEATURES = """
import numpy as np
from retail_prediction import serve
from retail_prediction.serving import predictor

def score(self, baskets):
    row = np.full((len(baskets), len(self.feature_names)), 0.25, dtype=np.float32)
    zeros = np.zeros(len(baskets), dtype=np.int64)
    return predictor.Scores(self.predict_features(row), zeros, zeros, row)

predictor.Predictor.score = score
serve.main()
"""


class ConstantFeatureServer(Server):
    """`api_load.Server`, with the featurization replaced as above."""

    command = (sys.executable, "-c", _CONSTANT_FEATURES)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    baskets = sample_baskets(args.data, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        bodies = Path(tmp) / "bodies.jsonl"
        bodies.write_text("".join(json.dumps(b) + "\n" for b in baskets))
        for _ in range(args.rounds):
            for name, kind in (("real", Server), ("constant", ConstantFeatureServer)):
                server = kind(args.model, {"LOG_LEVEL": os.environ.get("LOG_LEVEL", "info")}, Path(tmp) / "log")
                try:
                    cpu0 = server.cpu_seconds()
                    r = run_wrk(server.url + "/predict", WRK_SCRIPT, bodies, 1, args.seconds)
                    cpu = (server.cpu_seconds() - cpu0) / r["requests"]
                finally:
                    server.stop()
                print(f"{name:9s} {r['requests'] / (r['duration_us'] / 1e6):7.0f} req/s  p50 {r['p50_us']} µs  "
                      f"server CPU per request {cpu * 1e6:.0f} µs", flush=True)


if __name__ == "__main__":
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    main()
