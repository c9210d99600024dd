"""Per-request bookkeeping as one pure ASGI middleware: request id, access log line, metrics.

Pure ASGI (not Starlette's BaseHTTPMiddleware) because it adds only a few microseconds per request
and does not buffer or re-wrap response bodies.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..serving.metrics import Metrics
from .logs import ACCESS_LOGGER, write_access_line

REQUEST_ID_HEADER = b"x-request-id"
# A client's id is reused only when it is short and printable, so it cannot forge log lines.
_CLIENT_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")
# Probes and scrapes run every few seconds: their access lines go to debug so they do not drown the rest.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

access_log = logging.getLogger(ACCESS_LOGGER)


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _CLIENT_ID.match(value):
            return value.decode()
    # 128 random bits like a uuid4, without its getrandom() system call: an id needs to be unique,
    # not unpredictable.
    return f"{random.getrandbits(128):032x}"


def route_of(scope: Scope) -> str:
    """The matched route's template (bounded label cardinality), or 'unmatched'."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, model_version: Callable[[], str | None]) -> None:
        self.app = app
        self.metrics = metrics
        self.model_version = model_version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope)
        scope["request_id"] = request_id
        scope["request_started"] = started  # the payload log's latency
        status = 500  # what the client sees if the app dies before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - started)

    def _record(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = route_of(scope)
        # Clients choose the method: anything unusual is one label, so it cannot blow up the series.
        method = scope["method"] if scope["method"] in _METHODS else "other"
        self.metrics.observe(route, method, status, seconds)
        # A not-ready 503 from /ready is the expected answer while loading: still a probe, still quiet.
        quiet = route in _QUIET_ROUTES and (status < 500 or route == "/ready")
        level = logging.DEBUG if quiet else logging.INFO
        if access_log.isEnabledFor(level):
            fields = {
                "request_id": request_id, "method": scope["method"], "route": route, "path": scope["path"],
                "status": status, "latency_ms": round(seconds * 1000, 3),
                "model_version": scope.get("model_version") or self.model_version(),
            }  # fmt: skip
            if "caller" in scope:  # set by api/auth.py when authentication is on
                fields["caller"] = scope["caller"]
            write_access_line(level, fields)
