"""The one error body of the API, `{"error": {"code", "message", "details"}}`, for every failure.

Exception handlers turn validation errors, HTTP errors (404, 405, ...) and anything unexpected into it;
a stack trace never reaches a client (unexpected errors are logged server-side with the request id).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

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


def field_path(loc: Sequence[int | str]) -> str:
    """FastAPI's location tuple as a dotted path, e.g. `query.limit`."""
    return ".".join(str(p) for p in loc if p != "body") or "body"


def _error_item(err: Any) -> dict[str, Any]:
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    kind = err.get("type", "value_error")
    return {"field": field_path(err.get("loc", ())), "message": message, "type": kind}


def validation_error(errors: Sequence[Any]) -> ApiError:
    """A 422 naming the first bad field in the message and every bad field in the details."""
    fallback = {"field": "body", "message": "invalid request", "type": "invalid"}
    items = [_error_item(e) for e in errors] or [fallback]
    first = items[0]
    if first["type"] == "json_invalid":
        message = f"request body is not valid JSON: {first['message'].removeprefix('Invalid JSON: ')}"
    else:
        message = f"{first['field']}: {first['message']}"
    return ApiError(422, "validation_error", message, items)


def api_error_response(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return api_error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.scope.get('method_received', request.method)} not allowed on {request.url.path}"
    return error_response(exc.status_code, code, message, None, dict(exc.headers or {}))


async def _request_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    err = validation_error(list(exc.errors()))
    return error_response(err.status, err.code, err.message, err.details)


def unexpected_error_response(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", exc_info=exc, extra={"request_id": request.scope.get("request_id")})
    return error_response(500, "internal_error", "internal error; see the server log for this request id")


async def _unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_error_response(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(Exception, _unexpected)
