"""Time the serving featurization of one basket (the per-request cost of /predict before ONNX Runtime).

Usage: python benchmarks/featurize_one.py MODEL.tar.gz [--lines 6] [--repeat 5000]
"""

from __future__ import annotations

import argparse
import time

from retail_prediction.predictor import LineItem, Predictor, lines_from_items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--lines", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=5000)
    args = parser.parse_args()
    predictor = Predictor.load(args.model)
    examples = predictor.metadata["example_products"][: args.lines]
    items = [LineItem(e["product_id"], 2, e["price"], hierarchy=tuple(e["hierarchy"])) for e in examples]
    levels = predictor.hierarchy_levels
    stages = {
        "lines_from_items": lambda: lines_from_items([items], levels),
        "basket_features": lambda: predictor.features(lines_from_items([items], levels)),
        "features + ONNX": lambda: predictor.predict_proba(lines_from_items([items], levels)),
    }
    for name, run in stages.items():
        run()
        best = min(_time(run, args.repeat // 5) for _ in range(5))
        print(f"{name:>18}: {best * 1e6:7.1f} µs per basket of {len(items)} lines")


def _time(run, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n


if __name__ == "__main__":
    main()
