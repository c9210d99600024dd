"""The API's endpoints. Each parses its input, calls the PredictionService and answers: no logic of its own.

Routes are `LeanRoute`s (see `routing.py`): the endpoint gets the Request and returns the Response, and what
is declared here is exactly what runs. The traffic route comes first, then the probes. GET routes answer
HEAD too (some probes and load balancers use it; uvicorn sends the headers without the body).
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import msgspec
import orjson
from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, Response

from ..serving.metrics import CONTENT_TYPE
from ..serving.service import PredictionService
from ..serving.settings import Settings
from .body import read_body
from .decoding import decode_batch, decode_explain, decode_predict
from .errors import ApiError
from .model_info import model_info
from .routing import Declare
from .schemas import (
    BatchResponse,
    ErrorResponse,
    HealthResponse,
    PredictResponse,
    ReadyResponse,
    RequestTypes,
)

log = logging.getLogger("retail_prediction.api")

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [(413, "Body too large"), (415, "Body not sent as Content-Type: application/json"),
                       (422, "Invalid request (the message names the field)"), (503, "No model loaded yet")]
}  # fmt: skip


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def _request_body(name: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
            "parameters": [EXPLAIN_PARAMETER]}


EXPLAIN_PARAMETER = {
    "name": "explain", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
    "description": "Also say why: per line the class it points to, where that came from and its contribution "
    "to the predicted class's evidence, plus the top lines for and against it (docs/api.md, 'Explanations'). "
    "Costs about one more featurization pass; without it the answer is unchanged.",
}


def _static_text(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def register(app: FastAPI, service: PredictionService, types: RequestTypes, settings: Settings,
             internal: FastAPI | None = None) -> None:
    """Declare the endpoints on `app`'s router; `/model/info` and `/metrics` on `internal`'s when given
    (METRICS_PORT: the app of the internal port)."""
    api = Declare(app)
    ops = Declare(internal or app)
    max_body = settings.max_body_bytes
    payload_log = service.payload_log  # samples a share of the requests (PAYLOAD_LOG_SAMPLE_RATE)

    @api.post("/predict", response_model=PredictResponse, responses=_ERRORS, tags=["predict"],
              openapi_extra=_request_body("PredictRequest"))
    async def predict(request: Request) -> Response:
        """Classify one basket."""
        model = service.model()
        explain = decode_explain(request.scope.get("query_string", b""))
        basket = decode_predict(await read_body(request, max_body), types)
        if log.isEnabledFor(logging.DEBUG):  # basket contents are personal data: debug level only
            log.debug("basket", extra={"request_id": request.scope["request_id"],
                                       "basket": msgspec.to_builtins(basket)})
        answer = await service.predict(model, basket)
        request.scope["model_version"] = version = model.predictor.version
        payload_log.offer(request.scope, version, (basket,), (answer,))
        body = {**answer, "customer_id": basket.customer_id, "model_version": version,
                "request_id": request.scope["request_id"]}
        if explain:
            body["explanation"] = (await service.explain(model, (basket,), (answer,)))[0]
        return json_response(body)

    @api.post("/predict/batch", response_model=BatchResponse, responses=_ERRORS, tags=["predict"],
              openapi_extra=_request_body("BatchRequest"))
    async def predict_batch(request: Request) -> Response:
        """Classify many baskets (at most MAX_BATCH_SIZE); answers come back in the same order."""
        model = service.model()
        explain = decode_explain(request.scope.get("query_string", b""))
        batch = decode_batch(await read_body(request, max_body), types)
        answers = await service.predict_batch(model, batch.baskets)
        payload_log.offer(request.scope, model.predictor.version, batch.baskets, answers)
        predictions = [{**answer, "customer_id": basket.customer_id}
                       for answer, basket in zip(answers, batch.baskets, strict=True)]
        if explain:
            for prediction, why in zip(predictions, await service.explain(model, batch.baskets, answers), strict=True):
                prediction["explanation"] = why
        request.scope["model_version"] = version = model.predictor.version
        return json_response({"predictions": predictions, "model_version": version,
                              "request_id": request.scope["request_id"]})

    @api.get("/health", response_model=HealthResponse, tags=["probes"])
    async def health(request: Request) -> Response:
        """Liveness: 200 while the process serves. Never touches S3 or the model."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    @api.get("/ready", response_model=ReadyResponse, responses={503: _ERRORS[503]},
                   tags=["probes"])
    async def ready(request: Request) -> Response:
        """Readiness: 200 once a verified model is loaded and warmed up, else 503 with the reason (also
        while the server shuts down)."""
        if service.draining:
            raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"})
        return json_response({"status": "ready", "model_version": service.model().predictor.version})

    @ops.get("/model/info", responses={503: _ERRORS[503]}, tags=["model"])
    async def info(request: Request) -> Response:
        """The serving model: version, source, SHA-256, training weeks, metrics, classes, features, build."""
        shadow = service.shadow.info() if service.shadow else None
        return json_response(model_info(service.model(), service.manager.status, settings, shadow))

    @ops.get("/metrics", tags=["probes"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(_static_text("index.html"))
