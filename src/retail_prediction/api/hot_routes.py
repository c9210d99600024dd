"""The prediction routes, dispatched without Starlette's router and FastAPI's request machinery.

`/predict` is the one route that carries production traffic, and its work (parse, featurize, one ONNX
run) is small enough that walking the route table, building the endpoint's dependency graph and
FastAPI's exception middleware were a measured share of every request. This layer sits under the
request-context middleware (so request ids, access lines and metrics are unchanged) and calls the very
same handler functions the FastAPI routes hold; those routes stay registered, so OpenAPI, `/docs`,
other methods (405) and trailing-slash variants behave as before. HEAD is answered as GET on every route,
these and FastAPI's alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import ApiError, api_error_response, unexpected_error_response

Handler = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], tuple[BaseRoute, Handler]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hit = self.routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if hit is None:
            if scope.get("method") == "HEAD":
                await self._head_as_get(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        route, handler = hit
        scope["route"] = route  # what the metrics and the access line name the request by
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except ApiError as exc:
            response = api_error_response(exc)
        except ClientDisconnect:
            return  # nobody left to answer
        except Exception as exc:  # the uniform 500, never a stack trace
            response = unexpected_error_response(request, exc)
        await response(scope, receive, send)

    async def _head_as_get(self, scope: Scope, receive: Receive, send: Send) -> None:
        """HEAD answered as GET would be, on every route (FastAPI's routes accept only the methods they
        declare); the server (uvicorn) sends the headers without the body."""
        as_get = {**scope, "method": "GET", "method_received": "HEAD"}  # errors name the method received
        try:
            await self.app(as_get, receive, send)
        finally:
            if "route" in as_get:  # what the access line and the metrics name the request by
                scope["route"] = as_get["route"]
