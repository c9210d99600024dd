"""uvicorn's httptools protocol plus the HTTP limits uvicorn does not enforce itself.

In httptools mode uvicorn buffers a request's headers without bound and has no timer on a request being
received: one client can hold memory with an endless header, or a connection with one byte every few
seconds. `LimitedHttpToolsProtocol` adds, per connection:

- a cap on the bytes of a request's line and headers (431, then the connection is closed);
- a deadline on receiving the headers and another on receiving the body (the connection is closed);
- the keep-alive idle timer on a fresh connection too (uvicorn arms it only after a response);
- a cap on open connections (503, then the connection is closed);
- a drain on shutdown: an idle keep-alive connection is not cut at once (a client may be writing its next
  request on it): its next request is answered with `Connection: close`, or it is closed after
  `DRAIN_IDLE_SECONDS` with none.

A timer is armed only when a request spans several reads, so a request that arrives whole (the usual
case) costs a few attribute checks and no timer. The subclass uses uvicorn 0.54's protocol internals
(`cycle`, `timeout_keep_alive_task`, `connections`; uvicorn is pinned): tests/api/test_http_limits.py
checks every limit against a real server, so an upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

# On shutdown, an idle keep-alive connection gets this long to send one more request (answered with
# `Connection: close`) before it is closed.
DRAIN_IDLE_SECONDS = 1.0


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 16_384
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 256


def refusal(status: int, code: str, message: str, details: Any = None) -> bytes:
    """A complete `Connection: close` response with the API's uniform error body."""
    body = orjson.dumps({"error": {"code": code, "message": message, "details": details}})
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    return STATUS_LINE[status] + head + body


_base = HttpToolsProtocol


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HttpLimits | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits = limits or HttpLimits()
        self._in_body = False  # between a request's end of headers and its end
        self._head_bytes = 0  # bytes received since the last end of headers (or the connection's start)
        self._deadline: asyncio.TimerHandle | None = None
        self._draining = False
        self._too_large = refusal(431, "headers_too_large",
                                  f"request line and headers exceed the {limits.max_header_bytes}-byte limit",
                                  {"max_header_bytes": limits.max_header_bytes})

    # ---- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        if len(self.connections) > cap:
            self.logger.warning("refused a connection: %d open, the limit is %d", len(self.connections) - 1, cap)
            self._refuse(refusal(503, "too_many_connections", f"the server holds its limit of {cap} connections",
                                 {"max_connections": cap}))
            return
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # The hot path: plain attribute checks, base methods called directly (cheaper than super()).
        if not self._in_body:
            self._head_bytes += len(data)
        _base.data_received(self, data)
        if self._in_body:
            if self._deadline is None and not self.transport.is_closing():
                self._deadline = self.loop.call_later(self.limits.body_timeout, self._timed_out, "body")
            return
        if self._head_bytes > self.limits.max_header_bytes:
            if not self.transport.is_closing():
                self._refuse(self._too_large)
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and self._head_bytes == 0:
            return  # whole requests arrived: their answer is pending, nothing more is being received
        # A request's head, or bytes that began none (blank lines): both on the header clock.
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._timed_out, "headers")

    def shutdown(self) -> None:
        """Graceful shutdown: finish the request in progress, tell the client with `Connection: close`."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif not self._head_bytes:  # idle: nothing of a next request received
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                min(DRAIN_IDLE_SECONDS, self.timeout_keep_alive), self.timeout_keep_alive_handler)
        # else a request is arriving: on_headers_complete gives it `Connection: close`

    # ---- parser callbacks

    def on_headers_complete(self) -> None:
        self._in_body = True
        self._head_bytes = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        _base.on_headers_complete(self)
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        _base.on_message_complete(self)

    # ---- helpers

    def _arm_idle_timer(self) -> None:
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self, what: str) -> None:
        self._deadline = None
        self.logger.info("closed a connection: the request's %s did not arrive in time", what)
        self._refuse(None)

    def _refuse(self, response: bytes | None) -> None:
        """Close the connection, first answering `response` unless another response is still pending."""
        self._cancel_deadline()
        self._unset_keepalive_if_required()
        if response is not None and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(response)
        self.transport.close()
