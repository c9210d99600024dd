"""Reading a JSON request body under a size limit.

The body must be declared JSON: `Content-Type: application/json`, with or without `charset=utf-8` (the only
encoding JSON has on the wire, RFC 8259); anything else, or none, is a 415 before a byte of the body is
read. The declared Content-Length is checked first (cheap refusal), but the limit is enforced on the bytes
actually received, so a chunked upload or a lying header cannot push more than the limit into memory.
The body is read straight from the ASGI `receive` channel: Starlette's `Request.stream()` (an async
generator) and its parsed header map cost more per /predict call (docs/benchmarks.md).
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"
_JSON = b"application/json"
# What clients send, accepted without parsing (a set lookup).
_COMMON_JSON = frozenset({_JSON, *(_JSON + sep + b"charset=" + cs for sep in (b"; ", b";")
                                   for cs in (b"utf-8", b"UTF-8", b"utf8"))})


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds the {limit}-byte limit",
                    {"max_body_bytes": limit})


def _unsupported(content_type: bytes | None) -> ApiError:
    sent = None if content_type is None else content_type.decode("latin-1")[:100]
    return ApiError(415, "unsupported_media_type", "the body must be JSON, sent with Content-Type: "
                    f"application/json (got {'none' if sent is None else repr(sent)})", {"content_type": sent})


def _is_json(content_type: bytes) -> bool:
    """`application/json`, any case, whose only parameter, if any, is charset=utf-8 (or utf8)."""
    if content_type in _COMMON_JSON:
        return True
    kind, _, params = content_type.partition(b";")
    if kind.strip().lower() != _JSON:
        return False
    for param in params.split(b";"):
        name, _, value = param.partition(b"=")
        if param.strip() and (name.strip().lower() != b"charset"
                              or value.strip().strip(b'"').lower() not in (b"utf-8", b"utf8")):
            return False
    return True


def _headers(request: Request) -> tuple[int | None, bytes | None]:
    """The declared Content-Length (None when absent or not a number) and Content-Type, in one scan."""
    length = kind = None
    for name, value in request.scope["headers"]:
        if name == _CONTENT_LENGTH:
            length = int(value) if value.isdigit() else None
        elif name == _CONTENT_TYPE:
            kind = value
    return length, kind


async def read_body(request: Request, limit: int, *, require_json: bool = True) -> bytes:
    """The body, at most `limit` bytes; JSON declared unless `require_json` is False (the inference protocol's
    binary framing has no Content-Type of its own)."""
    declared, content_type = _headers(request)
    if require_json and (content_type is None or not _is_json(content_type)):
        raise _unsupported(content_type)
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
