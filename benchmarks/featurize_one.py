"""Time the serving featurization of one basket (the per-request cost of /predict before ONNX Runtime).

Usage: python benchmarks/featurize_one.py MODEL.tar.gz [--lines 6] [--repeat 5000]
"""

from __future__ import annotations

import argparse
import time

from retail_prediction.contract import BasketLine
from retail_prediction.features.client import ClientLines, encode_clients
from retail_prediction.features.tables import encoded_features
from retail_prediction.serving.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--lines", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5000)
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    examples = predictor.metadata["example_products"][: args.lines]
    items = [BasketLine.of(e["product_id"], 2, e["price"], None, e["hierarchy"]) for e in examples]
    tables = predictor.tables
    lines = encode_clients([items], tables)
    stages = {  # the API's path: encode_clients, then Predictor.score
        "line table + codes": lambda: encode_clients([items], tables),
        "features alone": lambda: _features(lines, predictor),
        "lines to features": lambda: _features(encode_clients([items], tables), predictor),
        "score (+ ONNX)": lambda: predictor.score([items]),
    }
    for name, run in stages.items():
        run()
        best = min(_time(run, args.repeat // 5) for _ in range(5))
        print(f"{name:>18}: {best * 1e6:7.1f} µs per basket of {len(items)} lines")


def _features(lines: ClientLines, predictor: Predictor):
    return encoded_features(lines.enc, lines.spend, lines.quantity, lines.basket, lines.n_baskets, predictor.tables)


def _time(run, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()
