"""Where a /predict request's CPU goes, measured in process (a script, not a test).

    python benchmarks/app_cost.py --model models/model.tar.gz [--data ../shared/data/lgsr] 2>/dev/null

`benchmarks/api_load.py` measures the server over real sockets; this script takes the sockets, uvicorn and
the kernel out and drives the ASGI app directly (the same middleware, hot routes, micro-batcher and
handlers), so the app's own cost per request can be set beside the HTTP stack's. It prints:
  1. one request at a time: GET /health and POST /predict through the whole app (real baskets);
  2. /predict with N requests in flight at once (micro-batching) for a few N;
  3. the stages of scoring one basket, each timed alone in a loop: validation, line items, line table and
     code lookups, features, ONNX Runtime, the whole `score`.
Figures are per request, best conditions (caches hot, no other work): a real server pays more per request
(see docs/benchmarks.md for both).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop
from api_load import DEFAULT_DATA, sample_baskets  # benchmarks/ is on the path when run as a script


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--baskets", type=int, default=500, help="real baskets sampled from --data")
    parser.add_argument("--requests", type=int, default=5000, help="timed requests per scenario")
    parser.add_argument("--in-flight", default="1,8,32", help="concurrent /predict requests (comma-separated)")
    return parser.parse_args()


def scope(method: str, path: str, body: bytes, extra: list[tuple[bytes, bytes]] | None = None,
          query: bytes = b"") -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000), "state": {}}


async def call(app: Any, method: str, path: str, body: bytes = b"",
               extra: list[tuple[bytes, bytes]] | None = None, query: bytes = b"") -> bytes:
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:  # the app never asks twice for a complete body; a disconnect would end it
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    status = 0
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            chunks.append(message.get("body", b""))

    await app(scope(method, path, body, extra, query), receive, send)
    if status != 200:
        raise RuntimeError(f"{method} {path}: status {status}")
    return b"".join(chunks)


async def per_request(run: Callable[[int], Awaitable[Any]], n: int, batch: int = 1) -> float:
    """CPU seconds per request over n requests issued `batch` at a time."""
    for i in range(0, min(n, 500), batch):  # warm-up
        await run(i)
    started = time.process_time()
    for i in range(0, n, batch):
        await run(i)
    return (time.process_time() - started) / n


async def app_figures(args: argparse.Namespace, bodies: list[bytes]) -> None:
    from retail_prediction.api import create_app
    from retail_prediction.serving.settings import Settings

    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        while app.state.service.manager.current is None:
            if app.state.service.manager.status.state == "failed":
                sys.exit(f"model did not load: {app.state.service.manager.status.message}")
            await asyncio.sleep(0.01)
        n = args.requests
        health = await per_request(lambda i: call(app, "GET", "/health"), n)
        print(f"GET /health, one at a time:            {health * 1e6:7.1f} µs per request")
        for k in (int(x) for x in args.in_flight.split(",")):
            async def batch_of(i: int, k: int = k) -> None:
                if k == 1:  # awaited directly, like uvicorn's task does: gather would add a task per call
                    await call(app, "POST", "/predict", bodies[i % len(bodies)])
                    return
                await asyncio.gather(*(call(app, "POST", "/predict", bodies[(i + j) % len(bodies)]) for j in range(k)))

            cost = await per_request(batch_of, n, k)
            print(f"POST /predict, {k:3d} in flight:            {cost * 1e6:7.1f} µs per request")


def stage_figures(args: argparse.Namespace, bodies: list[bytes]) -> None:
    from retail_prediction.api.decoding import decode_predict
    from retail_prediction.api.schemas import Limits, request_types
    from retail_prediction.features.client import client_features, encode_clients
    from retail_prediction.features.tables import encoded_features
    from retail_prediction.serving.predictor import Predictor
    from retail_prediction.serving.service import answers

    predictor = Predictor.load(args.model)
    tables = predictor.tables
    types = request_types(Limits(128, 500, 1000))
    requests = [decode_predict(b, types) for b in bodies]
    encoded = [encode_clients([r.basket_items], tables) for r in requests]
    features = [encoded_features(e.enc, e.spend, e.quantity, e.basket, 1, tables) for e in encoded]
    scores = [predictor.score([r.basket_items]) for r in requests]
    stages: dict[str, Callable[[int], Any]] = {
        "validation (JSON -> checked structs)": lambda i: decode_predict(bodies[i], types),
        "line table, code rows (encode_clients)": lambda i: encode_clients([requests[i].basket_items], tables),
        "features from them (encoded_features)": lambda i: encoded_features(encoded[i].enc, encoded[i].spend,
                                                                    encoded[i].quantity, encoded[i].basket, 1, tables),
        "all three in one call (client_features)": lambda i: client_features([requests[i].basket_items], tables),
        "ONNX Runtime (one row)": lambda i: predictor.predict_features(features[i]),
        "answer (probabilities -> dict)": lambda i: answers(predictor, scores[i]),
        "score: all of the above but validation": lambda i: answers(predictor,
                                                                      predictor.score([requests[i].basket_items])),
    }
    print("\nscoring one basket, each stage alone in a loop (caches hot):")
    for name, run in stages.items():
        for i in range(len(bodies)):
            run(i)
        started = time.process_time()
        rounds = max(1, args.requests // len(bodies))
        for _ in range(rounds):
            for i in range(len(bodies)):
                run(i)
        cost = (time.process_time() - started) / (rounds * len(bodies))
        print(f"  {name:40s} {cost * 1e6:7.1f} µs")


def main() -> None:
    args = parse_args()
    # The app reads its settings from the environment, like the server. Its access lines are written to
    # stderr as in production (their cost counts): run with 2>/dev/null.
    os.environ.update({"MODEL_URI": str(args.model), "MODEL_POLL_SECONDS": "0"})
    baskets = sample_baskets(args.data, args.baskets)
    bodies = [orjson.dumps(b) for b in baskets]
    print(f"{len(bodies)} real baskets from {args.data}, model {args.model}, {os.cpu_count()} cores")
    uvloop.run(app_figures(args, bodies))  # the event loop uvicorn runs the app on
    stage_figures(args, bodies)


if __name__ == "__main__":
    main()
