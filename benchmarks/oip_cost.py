"""Where an Open Inference Protocol request's CPU goes beside /predict's, measured in process (a script).

    python benchmarks/oip_cost.py --model models/model.tar.gz [--data ../shared/data/lgsr] 2>/dev/null

For one basket per request (real baskets, JSON bodies): each stage of the OIP path and /predict's decode,
timed alone in a loop over the bodies (best of several repeats, µs per request), then both routes through
the whole ASGI app (no sockets) one at a time and 32 in flight (CPU time), and each endpoint alone with the
scoring replaced by a constant answer (what the route itself costs), interleaved, best of the rounds.
Best-of figures suit a shared machine: other work only ever adds time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from api_load import DEFAULT_DATA, sample_baskets  # benchmarks/ is on the path when run as a script
from app_cost import call, scope
from oip_load import INFER, oip_json


def best_us(run: Callable[[], Any], per: int, number: int = 20, repeat: int = 7) -> float:
    """µs per item: the best of `repeat` timings of `number` calls of `run` (each covering `per` items)."""
    return min(timeit.repeat(run, number=number, repeat=repeat)) / number / per * 1e6


def stage_figures(bodies: list[bytes], oip: list[bytes]) -> None:
    from starlette.responses import Response

    from retail_prediction.api import oip as route
    from retail_prediction.api.decoding import decode_predict
    from retail_prediction.api.oip_tensors import parse_request
    from retail_prediction.api.routes import json_response
    from retail_prediction.api.schemas import Limits, request_types

    limits = Limits()
    classes = ("LA", "MM", "UM", "XX")
    answer = {"label": "MM", "label_name": "Mid market", "probabilities": dict.fromkeys(classes, 0.25),
              "unknown_products": 0, "unknown_categories": 1}
    request = parse_request(oip[0], None)[0]
    types = request_types(limits)
    parsed = [parse_request(b, None) for b in oip]
    compiled = route.tensor_baskets(limits)  # built once, as the route does

    def oip_answer() -> Response:
        names = route._binary_outputs(request)[0]
        body = route.encode_outputs(route._outputs(names, ["b0"], [answer], classes), set(), "retail-prediction",
                                    "v", None)[0]
        return Response(body, media_type="application/json")

    stages: dict[str, Callable[[], Any]] = {
        "/predict: decode_predict": lambda: [decode_predict(b, types) for b in bodies],
        "OIP: parse_request": lambda: [parse_request(b, None) for b in oip],
        "OIP: baskets_from (parsed)": lambda: [route.baskets_from(p, raw, limits, compiled) for p, raw in parsed],
        "OIP: body -> baskets": lambda: [route.baskets_from(*parse_request(b, None), limits, compiled)
                                               for b in oip],
        "/predict: answer -> Response": lambda: json_response({**answer, "customer_id": None, "model_version": "v",
                                                                "request_id": "0123456789abcdef"}),
        "OIP: answer -> Response": oip_answer,
    }
    print("one basket per request, each stage alone (best of 7, µs per request):")
    for name, run in stages.items():
        single = "Response" in name  # one answer per call: more calls per timing
        print(f"  {name:42s} {best_us(run, 1 if single else len(bodies), 4000 if single else 20):6.2f}")


async def app_figures(bodies: list[bytes], oip: list[bytes], rounds: int, n: int) -> None:
    from retail_prediction.api import create_app
    from retail_prediction.serving.settings import Settings

    app = create_app(Settings())
    async with app.router.lifespan_context(app):
        while app.state.service.manager.current is None:
            await asyncio.sleep(0.01)
        best: dict[str, float] = {}
        routes = (("/predict", "/predict", bodies), ("OIP", INFER, oip))
        for _ in range(rounds):
            for label, path, sent in routes:
                for k in (1, 32):
                    started = time.process_time()
                    for i in range(0, n, k):
                        if k == 1:  # awaited directly, as uvicorn's task does: gather adds a task per call
                            await call(app, "POST", path, sent[i % len(sent)])
                            continue
                        await asyncio.gather(*(call(app, "POST", path, sent[(i + j) % len(sent)]) for j in range(k)))
                    cost = (time.process_time() - started) / n * 1e6
                    key = f"{label}, {k} in flight"
                    best[key] = min(best.get(key, cost), cost)
        # The endpoints alone, scoring replaced by a constant answer: what the routes themselves cost.
        service = app.state.service
        answer = (await service.predict(service.model(), decode_basket(bodies[0])))
        service.predict = constant_answer(answer)  # type: ignore[method-assign]
        for _ in range(rounds):
            for label, path, sent in routes:
                started = time.process_time()
                for i in range(n):
                    await call(app, "POST", path, sent[i % len(sent)])
                cost = (time.process_time() - started) / n * 1e6
                key = f"{label} whole app, scoring stubbed"
                best[key] = min(best.get(key, cost), cost)
                endpoint = app.router.lean_route("POST", path).endpoint
                requests = [request_of(path, sent[i % len(sent)]) for i in range(n)]
                started = time.perf_counter()
                for request in requests:
                    await endpoint(request)
                cost = (time.perf_counter() - started) / n * 1e6
                key = f"{label} endpoint, scoring stubbed"
                best[key] = min(best.get(key, cost), cost)
        print(f"whole app and endpoints alone, best of {rounds} interleaved rounds (µs per request):")
        for key, cost in best.items():
            print(f"  {key:42s} {cost:6.1f}")


def decode_basket(body: bytes) -> Any:
    from retail_prediction.api.decoding import decode_predict
    from retail_prediction.api.schemas import Limits, request_types

    return decode_predict(body, request_types(Limits()))


def constant_answer(answer: dict[str, Any]) -> Callable[..., Any]:
    async def predict(model: Any, basket: Any) -> dict[str, Any]:
        return answer

    return predict


def request_of(path: str, body: bytes) -> Any:
    """A Request as the route gets it, its body ready to read."""
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    asgi = scope("POST", path, body)
    asgi["request_id"] = "0123456789abcdef0123456789abcdef"
    return Request(asgi, receive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3200)
    parser.add_argument("--skip-app", action="store_true", help="the stages only")
    args = parser.parse_args()
    os.environ["MODEL_URI"], os.environ["LOG_LEVEL"] = str(args.model), "warning"
    baskets = sample_baskets(args.data, 300)
    bodies = [orjson.dumps(b) for b in baskets]
    oip = [oip_json([b]) for b in baskets]
    stage_figures(bodies, oip)
    if not args.skip_app:
        asyncio.run(app_figures(bodies, oip, args.rounds, args.requests))


if __name__ == "__main__":
    main()
