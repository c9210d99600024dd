"""The one error body of the API, `{"error": {"code", "message", "details"}}`, for every failure.

The routes answer their own errors with it (`routing.LeanRoute`); the app's exception handlers do the same
for what the router answers (404, 405) and for anything unexpected elsewhere. A stack trace never reaches
a client: unexpected errors are logged server-side with the request id.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..serving.service import ModelNotReady

log = logging.getLogger("retail_prediction.api")

_HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
    413: "payload_too_large", 415: "unsupported_media_type", 422: "validation_error",
    500: "internal_error", 503: "service_unavailable",
}  # fmt: skip


class ApiError(Exception):
    """Raised by handlers to answer with the uniform error body."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps({"error": {"code": code, "message": message, "details": details}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def api_error_response(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.scope.get('method_received', request.method)} not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, None, dict(exc.headers or {}))


def model_not_ready_response(exc: ModelNotReady) -> Response:
    return error_response(503, "model_not_ready", str(exc), {"state": exc.state, "reason": exc.reason},
                          {"Retry-After": "5"})


def unexpected_error_response(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"request_id": request.scope.get("request_id")})
    return error_response(500, "internal_error", "internal error; see the server log for this request id")


async def _unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_error_response(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
