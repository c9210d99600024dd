"""Lean routing: what a route declares is what runs, with none of FastAPI's per-request machinery.

Every endpoint of this API takes the `Request` and returns a `Response` (it decodes its own body with
msgspec), so FastAPI's dependency solving, body parsing and response serialisation would only cost time.
`LeanRoute` is an `APIRoute`, documented in OpenAPI like any other, whose ASGI app calls the endpoint and
turns the API's exceptions into the uniform error body right there: no exception climbs through the
middleware stack. `LeanRouter` finds those routes by one dict lookup; `LeanApp` is FastAPI with that router
and without the middleware layers the API does not use. What each saves: docs/benchmarks.md.

Every route names itself in `scope["route"]` when it matches (the access line's and the metrics' `route`):
FastAPI's router leaves that to its `APIRoute`s, so the plain Starlette routes and mounts it also holds
(`/openapi.json`, `/docs`, `/redoc`, `/static`) are made as `NamedRoute` / `NamedMount`, which do the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..serving.service import ModelNotReady
from .errors import ApiError, api_error_response, model_not_ready_response, unexpected_error_response

Endpoint = Callable[[Request], Awaitable[Response]]


class LeanRoute(APIRoute):
    """An APIRoute whose endpoint is called with the Request, as it is written."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = self._call

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except ApiError as exc:
            response = api_error_response(exc)
        except ModelNotReady as exc:
            response = model_not_ready_response(exc)
        except ClientDisconnect:
            return  # nobody left to answer
        except Exception as exc:  # the uniform 500, never a stack trace
            response = unexpected_error_response(request, exc)
        await response(scope, receive, send)


class _Named(BaseRoute):
    """A route that names itself in `scope["route"]` on a match, as FastAPI's APIRoute does."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


class NamedRoute(_Named, Route):
    """A Starlette route (the OpenAPI schema, the documentation pages) that names itself."""


class NamedMount(_Named, Mount):
    """A mount (the static files) that names itself: its path is the route (`/static`), whatever the file."""


class LeanRouter(APIRouter):
    """FastAPI's router, with an index of the lean routes by (method, path): the API's requests find their
    route in one dict lookup and answer their own errors. Anything else (404, 405, trailing slashes, the
    documentation, static files) takes FastAPI's walk over the routes' patterns, inside Starlette's
    exception middleware (`fallback`, set by `LeanApp`)."""

    _index: dict[tuple[str, str], LeanRoute] | None = None  # built at the first request, reset on changes
    fallback: ASGIApp | None = None

    def _lean_routes(self) -> dict[tuple[str, str], LeanRoute]:
        if self._index is None:
            self._index = {(method, route.path): route for route in self.routes
                           if isinstance(route, LeanRoute) and not route.param_convertors
                           for method in route.methods}
        return self._index

    def lean_route(self, method: str, path: str) -> LeanRoute | None:
        """The lean route that answers (method, path), if any."""
        return self._lean_routes().get((method, path))

    def add_route(self, path: str, endpoint: Callable[..., Any], methods: Any = None, name: str | None = None,
                  include_in_schema: bool = True) -> None:
        self.routes.append(NamedRoute(path, endpoint, methods=methods, name=name,
                                      include_in_schema=include_in_schema))
        self._mark_routes_changed()

    def mount(self, path: str, app: ASGIApp, name: str | None = None) -> None:
        self.routes.append(NamedMount(path, app=app, name=name))
        self._mark_routes_changed()

    def _mark_routes_changed(self) -> None:
        self._index = None
        super()._mark_routes_changed()

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self._lean_routes().get((scope["method"], scope["path"]))
            if route is not None:
                scope["route"] = route
                scope.setdefault("router", self)
                await route.app(scope, receive, send)
                return
        await (self.fallback or self.walk)(scope, receive, send)

    async def walk(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().app(scope, receive, send)


class LeanApp(FastAPI):
    """FastAPI with a `LeanRouter` and only the middleware this API uses."""

    def setup(self) -> None:
        # FastAPI builds its router itself, with no way to choose the class, then calls `setup` to declare
        # the OpenAPI route. LeanRouter adds behaviour only (its index is built lazily from the routes), so
        # the router FastAPI made can simply become one, here, before any route is declared.
        self.router.__class__ = LeanRouter
        super().setup()

    def build_middleware_stack(self) -> ASGIApp:
        """FastAPI's stack without the layers this app does not use: its telemetry (off), its body limit (the
        routes read bodies under MAX_BODY_BYTES) and its exit stack (no dependencies, no uploads); the
        exception middleware around the router's walk only (lean routes answer their own errors)."""
        error_handler = None
        handlers: dict[Any, Any] = {}
        for key, value in self.exception_handlers.items():
            if key in (500, Exception):
                error_handler = value
            else:
                handlers[key] = value
        router = self.router
        assert isinstance(router, LeanRouter)
        router.fallback = ExceptionMiddleware(router.walk, handlers=handlers, debug=self.debug)
        app: ASGIApp = router.app
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return ServerErrorMiddleware(app, handler=error_handler, debug=self.debug)


class Declare:
    """`@api.post(...)` / `@api.get(...)` that declare LeanRoutes on the app's own router."""

    def __init__(self, app: FastAPI) -> None:
        self.router = app.router

    def post(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        def declare(endpoint: Endpoint) -> Endpoint:
            self.router.add_api_route(path, endpoint, methods=["POST"], route_class_override=LeanRoute, **kwargs)
            return endpoint

        return declare

    def get(self, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
        """GET, and HEAD answered by the same endpoint (documented once, under GET)."""

        def declare(endpoint: Endpoint) -> Endpoint:
            self.router.add_api_route(path, endpoint, methods=["GET"], route_class_override=LeanRoute, **kwargs)
            self.router.add_api_route(path, endpoint, methods=["HEAD"], route_class_override=LeanRoute,
                                      include_in_schema=False)
            return endpoint

        return declare
