"""`retail-prediction serve`: run the API under uvicorn (httptools, uvloop) with the HTTP limits.

The HTTP limits of the settings (header bytes, header and body timeouts, keep-alive idle time, open
connections) are enforced by `http_limits.LimitedHttpToolsProtocol`, uvicorn's httptools protocol with
counters and timers added.

SIGTERM (Kubernetes' stop signal) or SIGINT starts a drain: `/ready` answers 503 (`shutting_down`), the
listening socket is closed (new connections are refused), requests in flight finish (up to
GRACEFUL_SHUTDOWN_SECONDS, inside Kubernetes' default 30 s grace period) and their responses carry
`Connection: close`, an idle keep-alive connection answers one more request with `Connection: close` or is
closed after `http_limits.DRAIN_IDLE_SECONDS`; then the app's shutdown runs (it stops the model poller)
and the process exits 0. With METRICS_PORT, `/metrics` and `/model/info` are served on that port by a second
uvicorn server in the same process and event loop (`_run_with_internal_port`), and are 404 on PORT; it
stops after the main server's drain. (uvicorn itself re-raises the signal after its shutdown, which ends the process
with 143: `_Server` does not.) With WORKERS > 1 uvicorn's supervisor runs the workers: the limits and
`Connection: close` hold there too, the `/ready` 503 during the drain does not.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn
from uvicorn._compat import asyncio_run

from .api import create_app
from .api.http_limits import HttpLimits, LimitedHttpToolsProtocol
from .api.logs import uvicorn_log_config
from .serving.settings import Settings

GRACEFUL_SHUTDOWN_SECONDS = 20
STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start
log = logging.getLogger("retail_prediction.serve")


def browse_url(host: str, port: int) -> str:
    """The page's address for a browser on this machine: a wildcard listening address is not one to open."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _say_where(host: str, port: int) -> None:
    url = browse_url(host, port)
    log.info("open %s in a browser (the API's documentation: %sdocs)", url, url)


def app_from_env() -> Any:
    """App factory for worker processes (WORKERS > 1): each builds its app from the environment."""
    return create_app(Settings())


class _Server(uvicorn.Server):
    """uvicorn's server that tells the app when it starts draining and exits normally after a signal."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            _say_where(self.config.host, self.config.port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn's version re-raises the captured signal once shut down (exit status 143 for SIGTERM).
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _InternalServer(uvicorn.Server):
    """The server of METRICS_PORT, beside the main one in the same event loop: it leaves the signals to the
    main server, which stops it once its own drain is over."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _run_with_internal_port(server: _Server, internal_app: Any, options: dict[str, Any]) -> None:
    """Run `server` and, on `options["port"]`, `internal_app` (same HTTP limits, no lifespan) until the main
    server stops. The internal port is bound first: if it is taken, the process exits before serving."""
    config = uvicorn.Config(internal_app, **{**options, "lifespan": "off"})
    sock = config.bind_socket()
    internal = _InternalServer(config)

    async def both() -> None:
        task = asyncio.create_task(internal.serve(sockets=[sock]))
        try:
            await server.serve()
        finally:
            internal.should_exit = True
            await task

    asyncio_run(both(), loop_factory=server.config.get_loop_factory())


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config's keyword arguments for these settings (the app aside)."""
    limits = HttpLimits(max_header_bytes=settings.max_header_bytes, header_timeout=settings.header_timeout_seconds,
                        body_timeout=settings.body_timeout_seconds, max_connections=settings.max_connections)
    return {
        "host": settings.host, "port": settings.port, "log_level": settings.log_level,
        "log_config": uvicorn_log_config(), "access_log": False, "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS, "proxy_headers": False,
        "http": functools.partial(LimitedHttpToolsProtocol, limits=limits),
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
    }  # fmt: skip


def serve(settings: Settings | None = None, *, host: str | None = None, port: int | None = None,
          workers: int | None = None) -> None:
    """Run the server until SIGTERM/SIGINT. Keyword arguments override the settings' HOST/PORT/WORKERS."""
    settings = settings or Settings()
    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    settings = settings.model_copy(update=overrides)
    if settings.metrics_port and (settings.metrics_port == settings.port or settings.workers > 1):
        sys.exit("METRICS_PORT must differ from the port, with one worker")
    options = uvicorn_options(settings)
    if settings.workers == 1:
        app = create_app(settings)
        server = _Server(uvicorn.Config(app, **options), on_exit=app.state.service.begin_drain)
        if app.state.internal_app is None:
            server.run()
        else:
            _run_with_internal_port(server, app.state.internal_app, {**options, "port": settings.metrics_port})
        if not server.started:
            sys.exit(STARTUP_FAILURE)
        return
    # Several workers need an importable factory; they read the same environment, so pass overrides on.
    os.environ.update({"HOST": settings.host, "PORT": str(settings.port)})
    _say_where(settings.host, settings.port)
    uvicorn.run("retail_prediction.serve:app_from_env", factory=True, workers=settings.workers, **options)


def main() -> None:
    """`python -m retail_prediction.serve`: same as `retail-prediction serve` with no options."""
    serve()


if __name__ == "__main__":  # pragma: no cover
    main()
