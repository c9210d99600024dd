"""What `?explain=true` costs and whether its drivers are real, in process (a script, not a test).

    python benchmarks/explain_cost.py --model models/model.tar.gz [--data ../shared/data/lgsr] 2>/dev/null

Prints, on real baskets:
  1. POST /predict through the whole app (as benchmarks/app_cost.py drives it), plain and with explain=true,
     in alternating rounds (the machine is shared: the median round counts), and the ratio;
  2. the same for POST /predict/batch of 100 baskets (per basket);
  3. the largest batch MAX_BODY_BYTES admits, of real baskets: request, plain answer and explained answer sizes;
  4. a check of the attribution against the model itself: remove a basket's top driver line (for the
     predicted class) and its probability of that class should fall; remove the top line against, and it
     should rise. Shares of baskets where it does, and the median change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop
from api_load import DEFAULT_DATA, sample_baskets  # benchmarks/ is on the path when run as a script
from app_cost import call


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--baskets", type=int, default=2000, help="real baskets sampled from --data")
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating plain / explain rounds")
    return parser.parse_args()


async def cpu_per_call(app: Any, path: str, bodies: list[bytes], query: bytes, n: int) -> float:
    """CPU seconds per call over n calls, one at a time (after a warm-up)."""
    for i in range(min(n, 200)):
        await call(app, "POST", path, bodies[i % len(bodies)], query=query)
    started = time.process_time()
    for i in range(n):
        await call(app, "POST", path, bodies[i % len(bodies)], query=query)
    return (time.process_time() - started) / n


async def compare(app: Any, path: str, bodies: list[bytes], n: int, rounds: int, per: int, what: str) -> None:
    plain, explained = [], []
    for _ in range(rounds):
        plain.append(await cpu_per_call(app, path, bodies, b"", n) / per)
        explained.append(await cpu_per_call(app, path, bodies, b"explain=true", n) / per)
    p, e = statistics.median(plain), statistics.median(explained)
    print(f"{what}: plain {p * 1e6:7.1f} µs, explain=true {e * 1e6:7.1f} µs (medians of {rounds} rounds), "
          f"ratio {e / p:.2f}")
    print(f"    rounds plain   {' '.join(f'{x * 1e6:.1f}' for x in plain)}")
    print(f"    rounds explain {' '.join(f'{x * 1e6:.1f}' for x in explained)}")


def largest_batch(baskets: list[dict[str, Any]], max_body: int, max_size: int) -> bytes:
    """As many real baskets as fit in one body of at most `max_body` bytes (and `max_size` baskets)."""
    chosen: list[dict[str, Any]] = []
    size = len(b'{"baskets":[]}')
    for basket in baskets * (1 + max_size // max(1, len(baskets))):
        extra = len(orjson.dumps(basket)) + 1
        if size + extra > max_body or len(chosen) == max_size:
            break
        chosen.append(basket)
        size += extra
    return orjson.dumps({"baskets": chosen})


async def app_figures(args: argparse.Namespace, baskets: list[dict[str, Any]]) -> None:
    from retail_prediction.api import create_app
    from retail_prediction.serving.settings import Settings

    settings = Settings()
    app = create_app(settings)
    bodies = [orjson.dumps(b) for b in baskets]
    async with app.router.lifespan_context(app):
        while app.state.service.manager.current is None:
            if app.state.service.manager.status.state == "failed":
                sys.exit(f"model did not load: {app.state.service.manager.status.message}")
            await asyncio.sleep(0.01)
        await compare(app, "/predict", bodies, args.requests, args.rounds, 1, "POST /predict, one at a time")
        batches = [orjson.dumps({"baskets": baskets[i:i + 100]}) for i in range(0, len(baskets) - 99, 100)]
        await compare(app, "/predict/batch", batches, max(5, args.requests // 100), args.rounds, 100,
                      "POST /predict/batch of 100, per basket")
        # The smallest lines JSON allows, as many as the limits admit: the most lines one request can explain.
        tiny = {"basket_items": [{"product_id": "A", "quantity": 1, "price": 1}] * settings.max_basket_lines}
        for what, chosen in (("real baskets", baskets), ("one-character lines", [tiny])):
            big = largest_batch(chosen, settings.max_body_bytes, settings.max_batch_size)
            decoded = orjson.loads(big)["baskets"]
            n_lines = sum(len(b["basket_items"]) for b in decoded)
            plain = await call(app, "POST", "/predict/batch", big)
            started = time.perf_counter()
            explained = await call(app, "POST", "/predict/batch", big, query=b"explain=true")
            seconds = time.perf_counter() - started
            print(f"largest batch of {what} under MAX_BODY_BYTES ({len(decoded)} baskets, {n_lines:,} lines): "
                  f"request {len(big):,} B, plain answer {len(plain):,} B, explained {len(explained):,} B "
                  f"({len(explained) / len(big):.1f}x the request, {(len(explained) - len(plain)) / n_lines:.0f} B "
                  f"per line), {seconds * 1e3:.0f} ms wall")


def driver_check(args: argparse.Namespace, baskets: list[dict[str, Any]]) -> None:
    from retail_prediction.api.decoding import decode_predict
    from retail_prediction.api.schemas import Limits, request_types
    from retail_prediction.serving.predictor import Predictor

    predictor = Predictor.load(args.model)
    types = request_types(Limits(128, 500, 1000))
    items = [decode_predict(orjson.dumps(b), types).basket_items for b in baskets]
    items = [lines for lines in items if len(lines) >= 2]
    proba = predictor.score(items).proba
    best = proba.argmax(axis=1)
    why = predictor.explain(items, best)
    for side, sign in (("drivers_for", -1), ("drivers_against", 1)):
        chosen = [b for b, w in enumerate(why) if w[side]]
        without = [[ln for j, ln in enumerate(items[b]) if j != why[b][side][0]["line"]] for b in chosen]
        after = predictor.score(without).proba[np.arange(len(chosen)), best[chosen]]
        delta = after - proba[chosen, best[chosen]]
        expected = np.mean(sign * delta > 1e-6)
        unchanged = np.mean(np.abs(delta) < 1e-6)
        lower = np.mean(sign * delta < -1e-6)
        print(f"remove the top line of {side:16s} ({len(chosen)} baskets of >= 2 lines): P(predicted class) moves "
              f"as expected in {expected:.1%}, the other way in {lower:.1%}, unchanged (|d| < 1e-6) in "
              f"{unchanged:.1%}; median change {np.median(delta):+.2e}, mean {np.mean(delta):+.2e}")


def main() -> None:
    args = parse_args()
    os.environ.update({"MODEL_URI": str(args.model), "MODEL_POLL_SECONDS": "0"})
    baskets = sample_baskets(args.data, args.baskets)
    print(f"{len(baskets)} real baskets from {args.data}, model {args.model}, {os.cpu_count()} cores")
    uvloop.run(app_figures(args, baskets))
    driver_check(args, baskets)


if __name__ == "__main__":
    main()
