"""Reading a request body under a size limit.

The declared Content-Length is checked first (cheap refusal), but the limit is enforced on the bytes
actually received, so a chunked upload or a lying header cannot push more than the limit into memory.
The body is read straight from the ASGI `receive` channel: Starlette's `Request.stream()` (an async
generator) and its parsed header map cost more per /predict call (docs/benchmarks.md).
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

_CONTENT_LENGTH = b"content-length"


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds the {limit}-byte limit",
                    {"max_body_bytes": limit})


def _declared_length(request: Request) -> int | None:
    for name, value in request.scope["headers"]:
        if name == _CONTENT_LENGTH:
            return int(value) if value.isdigit() else None
    return None


async def read_body(request: Request, limit: int) -> bytes:
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
