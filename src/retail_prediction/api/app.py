"""The FastAPI application: routes, wiring of the model manager, metrics, logging and error handling.

`/predict` reads the raw body under the size limit and decodes it into checked structs with msgspec in
one step (no intermediate dict), scores it through the micro-batcher on the event loop (a small
featurization + ONNX run is cheaper than a thread hand-off; see docs/benchmarks.md) and answers with
orjson. Large batches go to the thread pool so that probes stay responsive while they run.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import msgspec
import orjson
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute

from .. import __version__
from . import errors
from . import logging as api_logging
from .batcher import MicroBatcher
from .body import read_body
from .cache import PredictionCache
from .decoding import decode_batch, decode_predict
from .errors import ApiError
from .hot_routes import Handler, HotRoutes
from .metrics import CONTENT_TYPE, Metrics
from .middleware import RequestContextMiddleware
from .model_info import model_info
from .model_manager import LoadedModel, ModelManager
from .prediction import score_cached
from .schemas import (
    BatchRequest,
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    Limits,
    PredictRequest,
    PredictResponse,
    ReadyResponse,
    RequestTypes,
    json_schemas,
    request_types,
)
from .settings import Settings

log = logging.getLogger("retail_prediction.api")

# Above this many lines a request is scored in the thread pool instead of on the event loop.
INLINE_MAX_LINES = 2000
# Large batches are split into this many chunks scored in parallel threads (one per core).
PARALLEL_CHUNKS = max(1, min(4, os.cpu_count() or 1))

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [(413, "Body too large"), (422, "Invalid request (the message names the field)"),
                       (503, "No model loaded yet")]
}  # fmt: skip


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _request_body(name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


class Service:
    """Everything a request handler needs, built once per app."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.manager = ModelManager(settings, self.metrics)
        self.cache = PredictionCache(settings.cache_size)
        self.limits = Limits(settings.max_string_length, settings.max_basket_lines, settings.max_batch_size)
        self.types = request_types(self.limits)
        self.batcher = MicroBatcher(self.score, max_lines=INLINE_MAX_LINES)
        self.draining = False  # set once the server begins its graceful shutdown

    def begin_drain(self) -> None:
        """From now on /ready answers 503, so that load balancers stop sending before the process goes."""
        self.draining = True

    def model(self) -> LoadedModel:
        model = self.manager.current
        if model is None:
            status = self.manager.status
            detail = f": {status.message}" if status.message else ""
            raise ApiError(503, "model_not_ready", f"no model loaded yet ({status.state}){detail}",
                           {"state": status.state, "reason": status.reason}, headers={"Retry-After": "5"})
        return model

    def model_version(self) -> str | None:
        model = self.manager.current
        return model.predictor.version if model else None

    async def parse(self, request: Request, decode: Callable[[bytes, RequestTypes], Any]) -> Any:
        return decode(await read_body(request, self.settings.max_body_bytes), self.types)

    async def predict_one(self, model: LoadedModel, basket: PredictRequest) -> dict[str, Any]:
        mode = self.settings.predict_execution
        if mode == "batched":
            return await self.batcher.predict(model, basket)
        if mode == "threadpool":
            return (await run_in_threadpool(self.score, model, [basket]))[0]
        return self.score(model, [basket])[0]

    async def score_batch(self, model: LoadedModel, baskets: list[PredictRequest]) -> list[dict[str, Any]]:
        """Small batches inline; large ones in worker threads, split in one chunk per core.

        ONNX Runtime releases the GIL while it runs the trees, so one chunk's inference overlaps the next
        chunk's (GIL-bound) featurization; and the event loop keeps answering probes meanwhile.
        """
        n_lines = sum(len(b.basket_items) for b in baskets)
        if n_lines <= INLINE_MAX_LINES:
            return self.score(model, baskets)
        size = -(-len(baskets) // PARALLEL_CHUNKS)
        chunks = [baskets[i:i + size] for i in range(0, len(baskets), size)]
        parts = await asyncio.gather(*(run_in_threadpool(self.score, model, chunk) for chunk in chunks))
        return [answer for part in parts for answer in part]

    def score(self, model: LoadedModel, baskets: Sequence[PredictRequest]) -> list[dict[str, Any]]:
        answers, hits = score_cached(model.predictor, baskets, self.cache)
        self.metrics.scored_together.observe(len(baskets))
        if self.cache.enabled:
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(len(baskets) - hits)
        self.metrics.count_predictions([answer["label"] for answer in answers])
        return answers


def _routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", response_model=HealthResponse, tags=["probes"])
    async def health(request: Request) -> Response:
        """Liveness: 200 while the process serves. Never touches S3 or the model."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/ready", response_model=ReadyResponse, responses={503: _ERRORS[503]}, tags=["probes"])
    async def ready(request: Request) -> Response:
        """Readiness: 200 once a verified model is loaded and warmed up, else 503 with the reason (also
        while the server shuts down)."""
        if service.draining:
            raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"})
        return json_response({"status": "ready", "model_version": service.model().predictor.version})

    @app.get("/model/info", responses={503: _ERRORS[503]}, tags=["model"])
    async def info() -> Response:
        """The serving model: version, source, SHA-256, training weeks, metrics, classes, features, build."""
        return json_response(model_info(service.model(), service.manager.status, service.settings))

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/predict", response_model=PredictResponse, responses=_ERRORS, tags=["predict"],
              openapi_extra=_request_body("PredictRequest"))
    async def predict(request: Request) -> Response:
        """Classify one basket."""
        model = service.model()
        basket = await service.parse(request, decode_predict)
        if log.isEnabledFor(logging.DEBUG):  # basket contents are personal data: debug level only
            log.debug("basket", extra={"request_id": request.scope["request_id"],
                                       "basket": msgspec.to_builtins(basket)})
        answer = await service.predict_one(model, basket)
        request.scope["model_version"] = version = model.predictor.version
        return json_response({**answer, "model_version": version, "request_id": request.scope["request_id"]})

    @app.post("/predict/batch", response_model=BatchResponse, responses=_ERRORS, tags=["predict"],
              openapi_extra=_request_body("BatchRequest"))
    async def predict_batch(request: Request) -> Response:
        """Classify many baskets (at most MAX_BATCH_SIZE); answers come back in the same order."""
        model = service.model()
        batch: BatchRequest = await service.parse(request, decode_batch)
        answers = await service.score_batch(model, batch.baskets)
        predictions = [{**answer, "customer_id": basket.customer_id}
                       for answer, basket in zip(answers, batch.baskets, strict=True)]
        request.scope["model_version"] = version = model.predictor.version
        return json_response({"predictions": predictions, "model_version": version,
                              "request_id": request.scope["request_id"]})

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))


# Served by `HotRoutes` straight from the middleware stack: the traffic route and the probes (the probes
# too, so that /health stays a fair ceiling of the HTTP stack /predict runs on). HEAD of a probe is its
# GET (uvicorn sends no body for HEAD).
_HOT = (("POST", "/predict"), ("POST", "/predict/batch"), ("GET", "/health"), ("GET", "/ready"))


def _hot_routes(app: FastAPI) -> dict[tuple[str, str], tuple[BaseRoute, Handler]]:
    found = {(method, route.path): (route, route.endpoint) for route in app.routes
             if isinstance(route, APIRoute) for method in route.methods}
    hot = {key: found[key] for key in _HOT}
    return hot | {("HEAD", path): hit for (method, path), hit in hot.items() if method == "GET"}


def _static_text(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _openapi(app: FastAPI, types: RequestTypes) -> Callable[[], dict[str, Any]]:
    """OpenAPI plus the request bodies' schemas, which FastAPI does not see (the handlers decode them)."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(json_schemas(types))
            app.openapi_schema = schema
        return app.openapi_schema

    return build


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: Service = app.state.service
    service.manager.start()
    try:
        yield
    finally:
        service.manager.stop()
        api_logging.flush_access_lines()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    api_logging.configure(settings.log_level)
    service = Service(settings)
    app = FastAPI(title="Retail Prediction API", version=__version__, lifespan=_lifespan,
                  description="Classifies a shopping basket's price sensitivity (LA / MM / UM / XX).",
                  # FastAPI's OpenTelemetry hook looks its providers up on every request (a measured ~10 %
                  # of a cached /predict); we export Prometheus metrics and JSON logs instead.
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.service = service
    errors.install(app)
    _routes(app, service)
    static = resources.files(__package__).joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.openapi = _openapi(app, service.types)  # type: ignore[method-assign]
    app.add_middleware(HotRoutes, routes=_hot_routes(app))
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-Request-ID"], expose_headers=["X-Request-ID"])
    app.add_middleware(RequestContextMiddleware, metrics=service.metrics, model_version=service.model_version)
    return app
