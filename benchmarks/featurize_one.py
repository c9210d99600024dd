"""Time the serving featurization of one basket (the per-request cost of /predict before ONNX Runtime).

Usage: python benchmarks/featurize_one.py MODEL.tar.gz [--lines 6] [--repeat 5000]
"""

from __future__ import annotations

import argparse
import time

from retail_prediction.features import basket_features
from retail_prediction.predictor import LineItem, Predictor, encode_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--lines", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5000)
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    examples = predictor.metadata["example_products"][: args.lines]
    items = [LineItem(e["product_id"], 2, e["price"], hierarchy=tuple(e["hierarchy"])) for e in examples]
    tables = predictor.tables
    lines, enc = encode_items([items], tables)
    stages = {  # the API's path: encode_items, then Predictor.score
        "line table + codes": lambda: encode_items([items], tables),
        "features alone": lambda: basket_features(lines, tables, enc=enc),
        "lines to features": lambda: _features(items, predictor),
        "score (+ ONNX)": lambda: predictor.score(*encode_items([items], tables)),
    }
    for name, run in stages.items():
        run()
        best = min(_time(run, args.repeat // 5) for _ in range(5))
        print(f"{name:>18}: {best * 1e6:7.1f} µs per basket of {len(items)} lines")


def _features(items: list[LineItem], predictor: Predictor):
    lines, enc = encode_items([items], predictor.tables)
    return basket_features(lines, predictor.tables, enc=enc)


def _time(run, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()
