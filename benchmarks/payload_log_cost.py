"""What the sampled payload log costs (a script, not a test).

    python benchmarks/payload_log_cost.py [--lines 10] [--number 200000]

Prints, per call, best of 5 timeit runs: `PayloadLog.offer` on the request path with sampling off (the
default), on but this request not drawn, and drawn (queued); then the writer thread's work per record
(JSON encoding with the customer id hashed, plus gzip), which runs off the event loop but shares the GIL.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import timeit
from collections.abc import Callable

from retail_prediction.contract import Basket, BasketLine
from retail_prediction.serving.metrics import Metrics
from retail_prediction.serving.payload_log import Entry, PayloadLog, _Part, customer_hasher
from retail_prediction.serving.settings import Settings

ANSWER = {"label": "MM", "label_name": "Mid market", "probabilities": {"LA": 0.1, "MM": 0.6, "UM": 0.2, "XX": 0.1},
          "unknown_products": 0, "unknown_categories": 0}


def best_ns(stmt: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10, help="lines per basket")
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing")
    args = parser.parse_args()
    basket = Basket([BasketLine.of(f"PRD09{i:05d}", 1 + i % 3, 1.25 + i, None,
                                   (f"CL{i:05d}", f"DEP{i:05d}", f"G{i:05d}", f"D{i:05d}"))
                     for i in range(args.lines)], customer_id="CUST0000458630")
    scope = {"request_id": "0" * 32, "request_started": time.perf_counter(), "path": "/predict"}
    baskets, answers = (basket,), (ANSWER,)
    with tempfile.TemporaryDirectory() as tmp:
        def log(rate: float, **extra: object) -> PayloadLog:
            return PayloadLog(Settings(payload_log_sample_rate=rate, payload_log_uri=tmp,
                                       payload_log_queue_records=10**6, payload_log_queue_lines=10**7,
                                       **extra), Metrics())

        off, undrawn, drawn = log(0.0), log(1e-12), log(1.0)
        for name, payloads in [("sampling off", off), ("on, request not drawn", undrawn)]:
            ns = best_ns(lambda p=payloads: p.offer(scope, "v1", baskets, answers), args.number)
            print(f"offer, {name + ':':22s} {ns:7.0f} ns")
        ns = best_ns(lambda: drawn.offer(scope, "v1", baskets, answers), 100_000)
        print(f"offer, {'drawn (queued):':22s} {ns:7.0f} ns")

        writer = log(1.0, payload_log_customer_id="hash", payload_log_hash_key="k")
        writer._hasher = customer_hasher(writer.settings)
        entry = Entry(time.time(), "0" * 32, "/predict", "v1", baskets, answers, 0.001)
        part = _Part("dt=x/hour=00", time.time())

        def write_one() -> None:
            for line in writer._encode(entry, writer._clock(entry.at)[0]):
                part.add(line)

        ns = best_ns(write_one, 20_000)
        print(f"writer, per record ({args.lines} lines, customer id hashed, gzip): {ns / 1000:.1f} µs "
              f"({part.raw_bytes / part.records:.0f} bytes of JSON a record)")


if __name__ == "__main__":
    main()
