"""The API reference pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), served whole by the app: they work
offline (clusters in private subnets, air-gapped networks).

FastAPI's own pages load their JS and CSS from a CDN and a favicon from fastapi.tiangolo.com. Here the app
is built with `docs_url=None, redoc_url=None` and these routes render FastAPI's same HTML pointing at files
it serves itself under `/docs/assets`: Swagger UI's and ReDoc's bundles as the `fastapi-offline` package
ships them (pinned and hash-checked in requirements/runtime.lock like every runtime dependency; only its
static files are used), and the page's favicon from `static/`. No web fonts, and no Swagger validator badge
(it would send the schema's address to swagger.io). ReDoc always shows Redocly's logo from their CDN (an
image that hides itself when it fails): the page's Content-Security-Policy keeps images to the app's own, so
no view of /redoc calls out.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

ASSETS = "/docs/assets"
FAVICON = "/static/favicon.svg"
# The distribution files of Swagger UI (swagger-ui-dist) and ReDoc (redoc.standalone.js).
_BUNDLES = resources.files("fastapi_offline").joinpath("static")


def register(app: FastAPI) -> None:
    """`/docs` and `/redoc` on `app` (built with docs_url=None, redoc_url=None), their assets mounted."""
    openapi_url = app.openapi_url or "/openapi.json"

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - Swagger UI", oauth2_redirect_url=None,
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=root + FAVICON, swagger_ui_parameters={"validatorUrl": None})

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js", redoc_favicon_url=root + FAVICON,
                              with_google_fonts=False)
        page.headers["Content-Security-Policy"] = "img-src 'self' data:"
        return page

    app.add_route("/docs", swagger_ui, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
    app.mount(ASSETS, StaticFiles(directory=str(_BUNDLES)), name="docs-assets")
