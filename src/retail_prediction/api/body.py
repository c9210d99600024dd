"""Reading a request body under a size limit.

The declared Content-Length is checked first (cheap refusal), but the limit is enforced on the bytes
actually received, so a chunked upload or a lying header cannot push more than the limit into memory.
"""

from __future__ import annotations

from starlette.requests import Request

from .errors import ApiError


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds the {limit}-byte limit",
                    {"max_body_bytes": limit})


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
