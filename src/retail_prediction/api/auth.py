"""Who may call: bearer-token authentication as one pure ASGI middleware, installed only when AUTH_MODE is
`keys` (api/auth_keys.py) or `jwt` (api/auth_jwt.py). With AUTH_MODE=off (the default) it is not in the
stack at all: the request path is unchanged.

Every path needs `Authorization: Bearer <key or token>` except the open ones: the probes (`/health`,
`/ready`, and the inference protocol's `/v2/health/live` and `/v2/health/ready`), the page (`/`), the
API's documentation (`/docs`, `/redoc`, `/openapi.json`, their assets) and static files: they hold nothing
a caller could misuse, and load balancers and kubelets carry no token.
Anything else, present or future (`/predict`, `/predict/batch`, `/model/info`, `/metrics`, `/v2/...`, and
unknown paths), is closed by default. A refusal is a 401 with `WWW-Authenticate: Bearer` (RFC 6750) and the
uniform error body; no checkable credentials (no keys, the issuer down) a 503, and `/ready` answers 503
while there are no keys, so a pod without its Secret never gets traffic. A caller's identity (the key's
name, the token's subject) goes to the access line (`scope["caller"]`) and, bounded, to the
`retail_prediction_caller_requests_total{caller}` counter; refusals to `..._auth_failures_total{reason}`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..serving.metrics import AuthMetrics
from ..serving.settings import Settings
from .auth_common import AuthFailure, AuthUnavailable
from .errors import error_response

log = logging.getLogger("retail_prediction.auth")

# The probes include the inference protocol's (KServe probes /v2/health/*; kubelets carry no token).
OPEN_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready", "/", "/docs", "/redoc",
                        "/openapi.json"})
READINESS = frozenset({"/ready", "/v2/health/ready"})
OPEN_PREFIXES = ("/static/", "/docs/assets/")
MAX_TOKEN_BYTES = 8192
REALM = "retail-prediction"
_AUTHORIZATION = b"authorization"


def is_open(path: str) -> bool:
    """Whether `path` is served without credentials (probes, page, API reference, static files)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def document(schema: dict[str, Any]) -> None:
    """Declare the bearer scheme in an OpenAPI schema and require it on every closed path (Swagger UI then
    offers "Authorize" and sends the header)."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["bearer"] = {"type": "http", "scheme": "bearer",
                         "description": "A key of AUTH_KEYS_FILE (AUTH_MODE=keys) or a JWT of the issuer (jwt)"}
    for path, operations in schema.get("paths", {}).items():
        if not is_open(path):
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation.setdefault("responses", {})["401"] = {"description": "Missing or wrong credential"}


class Authenticator(Protocol):
    async def caller(self, credential: str) -> str: ...

    def not_ready(self) -> str | None: ...


class KeysAuthenticator:
    """AUTH_MODE=keys: the key's name, from the keys file."""

    def __init__(self, settings: Settings, metrics: AuthMetrics) -> None:
        from .auth_keys import KeyStore

        assert settings.auth_keys_file is not None
        self.store = KeyStore(settings.auth_keys_file, metrics)

    async def caller(self, credential: str) -> str:
        name = self.store.caller(credential)
        if name is None:
            if self.store.problem:
                raise AuthUnavailable(self.store.problem)
            raise AuthFailure("invalid_key", "the bearer key is not valid")
        return name

    def not_ready(self) -> str | None:
        return self.store.not_ready()


class JwtAuthenticator:
    """AUTH_MODE=jwt: the token's subject."""

    def __init__(self, settings: Settings, metrics: AuthMetrics) -> None:
        from .auth_jwt import JwtVerifier

        self.verifier = JwtVerifier(settings, metrics)

    async def caller(self, credential: str) -> str:
        return await self.verifier.caller(credential)

    def not_ready(self) -> str | None:
        return None  # an issuer down is answered per request (503), cached tokens still pass


def bearer(scope: Scope) -> str | None:
    """The bearer credential of the request, '' when the header is there but not a bearer one, or None."""
    for name, value in scope["headers"]:
        if name == _AUTHORIZATION:
            credential = value[7:].strip()
            if value[:7].lower() != b"bearer " or not credential or len(credential) > MAX_TOKEN_BYTES:
                return ""
            try:
                return credential.decode("ascii")
            except UnicodeDecodeError:
                return ""
    return None


def _challenge(error: str | None) -> dict[str, str]:
    value = f'Bearer realm="{REALM}"' + (f', error="{error}"' if error else "")
    return {"WWW-Authenticate": value}


class AuthMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator, metrics: AuthMetrics, fastapi: FastAPI) -> None:
        self.app = app
        self.auth = authenticator
        self.metrics = metrics
        self.router = fastapi.router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # none is served: refused rather than left open to a future one
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)  # lifespan
            return
        path = scope["path"]
        if is_open(path):
            problem = self.auth.not_ready() if path in READINESS else None
            if problem is None:
                await self.app(scope, receive, send)
                return
            response = error_response(503, "auth_not_ready", problem, None, {"Retry-After": "5"})
        else:
            response = await self._check(scope)
            if response is None:
                await self.app(scope, receive, send)
                return
        lean_route = getattr(self.router, "lean_route", None)
        if lean_route is not None:  # the access line and the metrics name the route that was refused
            route = lean_route(scope["method"], path)
            if route is not None:
                scope["route"] = route
        await response(scope, receive, send)

    async def _check(self, scope: Scope) -> Response | None:
        """None when the caller is let through (its identity in `scope["caller"]`), else the refusal."""
        credential = bearer(scope)
        try:
            if credential is None:
                raise AuthFailure("missing", "this endpoint needs an `Authorization: Bearer` header")
            if not credential:
                raise AuthFailure("malformed", "the Authorization header must be `Bearer <credential>`")
            caller = await self.auth.caller(credential)
        except AuthFailure as exc:
            self.metrics.count_failure(exc.reason)
            error = None if exc.reason == "missing" else "invalid_token"
            return error_response(401, "unauthorized", str(exc), {"reason": exc.reason}, _challenge(error))
        except AuthUnavailable as exc:
            self.metrics.count_failure("unavailable")
            return error_response(503, "auth_unavailable", f"credentials cannot be checked now: {exc}", None,
                                  {"Retry-After": "5"})
        scope["caller"] = caller
        self.metrics.count_caller(caller)
        return None


def install(app: FastAPI, settings: Settings) -> None:
    """Add the middleware to `app` when AUTH_MODE is not off (call before the request-context middleware,
    so that one, outside, sees the caller and the refusals)."""
    if settings.auth_mode == "off":
        return
    metrics = AuthMetrics(app.state.service.metrics.registry, settings.auth_caller_labels)
    kind = KeysAuthenticator if settings.auth_mode == "keys" else JwtAuthenticator
    authenticator = kind(settings, metrics)
    app.add_middleware(AuthMiddleware, authenticator=authenticator, metrics=metrics, fastapi=app)
    log.info("authentication on", extra={"auth_mode": settings.auth_mode})
