"""What drift monitoring costs: per scoring call on the request path (DriftWindow.observe), per scrape
(snapshot), and one basket scored through PredictionService.score with the window on and off.

    .venv/bin/python benchmarks/drift_cost.py --model models/model.tar.gz [--data ../shared/data/lgsr]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

from retail_prediction.contract import Basket, BasketLine
from retail_prediction.serving.drift import DriftWindow
from retail_prediction.serving.service import PredictionService


def per_call(run, n: int, repeats: int = 5) -> float:
    """Median over `repeats` of the CPU µs per call of `run` (n calls per repeat)."""
    times = []
    for _ in range(repeats):
        started = time.process_time()
        for _ in range(n):
            run()
        times.append((time.process_time() - started) / n * 1e6)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    service, model = PredictionService.for_file(args.model)
    predictor = model.predictor
    if predictor.profile is None:
        raise SystemExit(f"{args.model} has no profile.json: train it with this version")
    examples = predictor.example_products(8)
    basket = Basket([BasketLine.of(e["product_id"], 1.0, float(e["price"] or 1), None, e["hierarchy"])
                     for e in examples])
    scores = predictor.score([basket.basket_items])
    best = scores.proba.argmax(axis=1)

    window = DriftWindow(predictor.profile, predictor.feature_names, 2000)
    observe = per_call(lambda: window.observe(scores.features, best), args.calls)
    print(f"observe, one basket per call:      {observe:6.2f} µs (amortized, folding included)")
    print(f"snapshot of a 2,000-basket window: {per_call(window.snapshot, 200):6.1f} µs (once per scrape)")

    def contended() -> float:
        done = []

        def hammer() -> None:
            started = time.perf_counter()
            for _ in range(args.calls):
                window.observe(scores.features, best)
            done.append((time.perf_counter() - started) / args.calls * 1e6)

        threads = [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return statistics.median(done)

    print(f"observe from 8 threads at once:    {contended():6.2f} µs wall per call per thread (GIL-shared)")

    model_off = type(model)(**{**model.__dict__, "drift": None})
    model_on = type(model)(**{**model.__dict__, "drift": DriftWindow(predictor.profile, predictor.feature_names, 2000)})
    baskets = [basket]
    for name, m in (("off", model_off), ("on", model_on)) * 3:
        print(f"PredictionService.score, one basket, drift {name:3}: "
              f"{per_call(lambda m=m: service.score(m, baskets), args.calls // 4):6.1f} µs")


if __name__ == "__main__":
    main()
