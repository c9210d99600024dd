"""The FastAPI application: wiring only. `create_app(settings)` builds the PredictionService, the routes
(`routes.py`), the API reference pages (`docs.py`), error handling, the static page and the middleware;
the lifespan starts and stops the model manager."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..serving.service import PredictionService
from ..serving.settings import Settings
from . import auth, docs, errors, logs, oip, routes
from .middleware import RequestContextMiddleware
from .oip_tensors import InferRequest
from .routing import LeanApp
from .schemas import Limits, RequestTypes, json_schemas, request_types


def _openapi(app: FastAPI, types: RequestTypes, secured: bool) -> Callable[[], dict[str, Any]]:
    """OpenAPI plus the request bodies' schemas, which FastAPI does not see (the routes decode them), and the
    bearer scheme on the closed paths when authentication is on."""

    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(json_schemas(types, InferRequest))
            if secured:
                auth.document(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    service: PredictionService = app.state.service
    service.start()
    try:
        yield
    finally:
        service.stop()
        logs.flush_access_lines()


def _internal_app(service: PredictionService) -> FastAPI:
    """The app of METRICS_PORT: `/metrics` and `/model/info` (declared by `routes.register`), the same
    service, error body and access lines; no lifespan of its own (the main app's starts the service)."""
    internal = LeanApp(title="Retail Prediction API (internal)", version=__version__, openapi_url=None,
                       docs_url=None, redoc_url=None, telemetry={"tracing": False, "metrics": False, "logs": False})
    internal.state.service = service
    errors.install(internal)
    internal.add_middleware(RequestContextMiddleware, metrics=service.metrics, model_version=service.model_version)
    return internal


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.configure(settings.log_level, settings.log_format)
    service = PredictionService(settings)
    limits = Limits(settings.max_string_length, settings.max_basket_lines, settings.max_batch_size)
    types = request_types(limits)
    app = LeanApp(title="Retail Prediction API", version=__version__, lifespan=_lifespan,
                  description="Classifies a shopping basket's price sensitivity (LA / MM / UM / XX).",
                  docs_url=None, redoc_url=None,  # served offline by docs.py
                  # FastAPI's OpenTelemetry hook looks its providers up on every request (a cost measured in
                  # docs/benchmarks.md); we export Prometheus metrics and JSON logs instead.
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.service = service
    errors.install(app)
    # With METRICS_PORT the operations routes live on an app of their own, served on that port (serve.py).
    app.state.internal_app = internal = _internal_app(service) if settings.metrics_port else None
    routes.register(app, service, types, settings, internal)
    oip.register_oip(app, service, settings, limits)
    docs.register(app)
    app.mount("/static", StaticFiles(directory=str(resources.files(__package__).joinpath("static"))), name="static")
    app.openapi = _openapi(app, types, settings.auth_mode != "off")  # type: ignore[method-assign]
    auth.install(app, settings)  # innermost: the middlewares below see its refusals and the caller
    if settings.cors_origins:
        allowed = ["Content-Type", "X-Request-ID"] + (["Authorization"] if settings.auth_mode != "off" else [])
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=allowed, expose_headers=["X-Request-ID"])
    app.add_middleware(RequestContextMiddleware, metrics=service.metrics, model_version=service.model_version)
    return app
