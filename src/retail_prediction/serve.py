"""`retail-prediction serve`: run the API under uvicorn.

SIGTERM (Kubernetes' stop signal) is handled by uvicorn: it stops accepting connections, lets requests
in flight finish (up to GRACEFUL_SHUTDOWN_SECONDS, inside Kubernetes' default 30 s grace period), runs
the app's shutdown (which stops the model poller) and exits 0.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn

from .api import create_app
from .api.logs import uvicorn_log_config
from .serving.settings import Settings

GRACEFUL_SHUTDOWN_SECONDS = 20


def app_from_env() -> Any:
    """App factory for worker processes (WORKERS > 1): each builds its app from the environment."""
    return create_app(Settings())


def serve(settings: Settings | None = None, *, host: str | None = None, port: int | None = None,
          workers: int | None = None) -> None:
    """Run the server until SIGTERM/SIGINT. Keyword arguments override the settings' HOST/PORT/WORKERS."""
    settings = settings or Settings()
    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    settings = settings.model_copy(update=overrides)
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "log_config": uvicorn_log_config(), "access_log": False, "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS, "proxy_headers": False,
    }  # fmt: skip
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Several workers need an importable factory; they read the same environment, so pass overrides on.
    os.environ.update({"HOST": settings.host, "PORT": str(settings.port)})
    uvicorn.run("retail_prediction.serve:app_from_env", factory=True, workers=settings.workers, **options)


def main() -> None:
    """`python -m retail_prediction.serve`: same as `retail-prediction serve` with no options."""
    serve()


if __name__ == "__main__":  # pragma: no cover
    main()
