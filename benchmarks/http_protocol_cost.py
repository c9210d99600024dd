"""In-process cost of the HTTP limits per request: uvicorn's httptools protocol against
`http_limits.LimitedHttpToolsProtocol` (a script, not a test; results go to docs/benchmarks.md).

    python benchmarks/http_protocol_cost.py [--requests 20000] [--repeats 7]

Each protocol gets a typical /predict request (headers + a 1 KB body) in one read on a keep-alive
connection, under uvloop, answered by a minimal ASGI app; the figure is the time per request-response,
best of the repeats (the two protocols interleaved, so that other load on the machine hits both alike).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from retail_prediction.api.http_limits import HttpLimits, LimitedHttpToolsProtocol

BODY = b'{"basket_items": [' + b", ".join(
    b'{"product_id": "PRD09%05d", "quantity": 1.0, "price": 1.03, "prod_code_10": "CL00001"}' % i
    for i in range(12)) + b"]}"
REQUEST = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY


class Transport(asyncio.Transport):
    """A socket stand-in: swallows writes."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def per_request_us(factory: Any, config: Config, n: int) -> float:
    protocol = factory(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(Transport())
    started = time.perf_counter()
    for _ in range(n):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs and answers
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    config = Config(app, log_config=None, access_log=False)
    config.load()
    limited = lambda **kw: LimitedHttpToolsProtocol(limits=HttpLimits(), **kw)  # noqa: E731
    candidates = {"uvicorn httptools": HttpToolsProtocol, "with the limits": limited}
    times: dict[str, list[float]] = {name: [] for name in candidates}

    async def run() -> None:
        for _ in range(args.repeats):
            for name, factory in candidates.items():
                times[name].append(await per_request_us(factory, config, args.requests))

    uvloop.run(run())
    best = {name: min(values) for name, values in times.items()}
    for name, value in best.items():
        print(f"{name:20s} {value:6.2f} us per request (best of {args.repeats}; all: "
              f"{', '.join(f'{v:.2f}' for v in times[name])})")
    print(f"overhead of the limits: {best['with the limits'] - best['uvicorn httptools']:+.2f} us per request")


if __name__ == "__main__":
    main()
