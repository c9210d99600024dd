"""The HTTP limits, the drain on SIGTERM, HEAD and integral floats, against a real server process over real
sockets (issue 12, points 4, 6 and 7)."""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retail_prediction.api.schemas import EXAMPLE_REQUEST

from .conftest import ApiProcess, wait_until

# Short limits so that each test takes seconds.
QUICK = {"header_timeout_seconds": "2", "body_timeout_seconds": "2", "keep_alive_timeout_seconds": "1",
         "log_level": "warning"}
MiB = 1 << 20


def memory_mb(api: ApiProcess) -> dict[str, float]:
    """The server's resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    lines = Path(f"/proc/{api.proc.pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def connect(api: ApiProcess, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def closed_after(sock: socket.socket, started: float, limit: float) -> float:
    """Seconds from `started` until the server closes `sock` (reading and discarding what it answers)."""
    while time.monotonic() - started < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - started
        except (TimeoutError, BlockingIOError):
            continue
        except OSError:  # reset
            return time.monotonic() - started
    raise AssertionError(f"the connection was still open after {limit} s")


def _status(api: ApiProcess, path: str) -> int | None:
    try:
        return httpx.get(api.url + path, timeout=2).status_code
    except httpx.TransportError:
        return None


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(scope="module")
def quick_api(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """One server with short timeouts, for the tests that do not measure memory."""
    root = tmp_path_factory.mktemp("limits")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AWS_"))}
    env.update({"MODEL_URI": str(model_path), "MODEL_POLL_SECONDS": "0", "MODEL_DIR": str(root / "models"),
                **{k.upper(): v for k, v in QUICK.items()}})
    api = ApiProcess(env, root / "api.log")
    api.wait_ready()
    yield api
    assert "Traceback" not in api.log(), api.log()[-3000:]
    api.kill()


def test_header_flood_is_cut_early_and_memory_stays_bounded(start_api: Callable[..., ApiProcess]) -> None:
    """50 connections each streaming an unterminated 16 MiB header: cut after MAX_HEADER_BYTES, not buffered."""
    api = start_api(log_level="warning")
    socks = [connect(api) for _ in range(50)]
    for sock in socks:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Flood: ")
    sent = dict.fromkeys(socks, 0)
    alive = set(socks)
    chunk = b"a" * 65536
    for _ in range(16 * MiB // len(chunk)):
        for sock in list(alive):
            try:
                sock.sendall(chunk)
                sent[sock] += len(chunk)
            except TimeoutError:
                raise AssertionError("the server stopped reading without closing the connection") from None
            except OSError:  # cut by the server
                alive.discard(sock)
        if not alive:
            break
    # What a client managed to send includes what the kernel buffers (megabytes on loopback); what the
    # server holds is its memory, below.
    assert not alive and max(sent.values()) < 16 * MiB, "every flooding connection must be cut"
    memory = memory_mb(api)
    assert memory["VmHWM"] < 300, memory
    assert api.http.get("/health").status_code == 200
    for sock in socks:
        sock.close()


def test_header_over_the_limit_gets_431(quick_api: ApiProcess) -> None:
    with connect(quick_api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 20_000)
        head = read_head(sock)
    assert head.startswith(b"HTTP/1.1 431 "), head[:200]
    assert b"connection: close" in head.lower() and b'"headers_too_large"' in head


@pytest.mark.parametrize("request_bytes", [b"GET /health HTTP/1.1\r\nHost: slow\r\n\r\n", b"\r\n" * 8],
                         ids=["request", "blank lines"])
def test_slowloris_is_cut_within_the_header_timeout(quick_api: ApiProcess, request_bytes: bytes) -> None:
    """One byte every 2 s: the connection is closed HEADER_TIMEOUT_SECONDS (2) after the first byte."""
    request = request_bytes
    with connect(quick_api) as sock:
        started = time.monotonic()
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # already closed
                break
            readable, _, _ = select.select([sock], [], [], 2.0)
            if readable:
                break
        elapsed = closed_after(sock, started, 6)
    assert 1.5 <= elapsed <= 4.5, elapsed


def test_trickled_body_is_cut_within_the_body_timeout(quick_api: ApiProcess) -> None:
    """Headers at once, then 10 bytes every 0.5 s: closed BODY_TIMEOUT_SECONDS (2) after the headers."""
    with connect(quick_api) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        started = time.monotonic()
        sock.setblocking(False)
        while time.monotonic() - started < 6:
            try:
                sock.send(b" " * 10)
            except OSError:
                break
            readable, _, _ = select.select([sock], [], [], 0.5)
            if readable:
                break
        sock.settimeout(1)
        elapsed = closed_after(sock, started, 6)
    assert 1.5 <= elapsed <= 4.5, elapsed
    assert quick_api.http.get("/health").status_code == 200


def test_idle_connections_are_closed_after_the_keep_alive_timeout(quick_api: ApiProcess) -> None:
    """KEEP_ALIVE_TIMEOUT_SECONDS (1): after a response, and on a fresh connection that sends nothing."""
    with connect(quick_api) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_head(sock).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        sock.settimeout(0.2)
        assert 0.7 <= closed_after(sock, started, 5) <= 3.5
    with connect(quick_api) as fresh:
        started = time.monotonic()
        fresh.settimeout(0.2)
        assert 0.7 <= closed_after(fresh, started, 5) <= 3.5


def test_connection_cap_refuses_the_excess_and_the_server_stays_healthy(
        start_api: Callable[..., ApiProcess]) -> None:  # fmt: skip
    api = start_api(max_connections="20", log_level="error")
    held = [connect(api) for _ in range(20)]
    time.sleep(0.3)  # let the server accept them
    excess = [connect(api) for _ in range(10)]
    for sock in excess:
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 503 ") and b'"too_many_connections"' in head, head[:200]
        assert sock.recv(65536) == b""  # and closed
    for sock in held + excess:
        sock.close()
    wait_until(lambda: _status(api, "/health") == 200, 5, "/health after the excess")


def test_partial_bodies_hold_bounded_memory_until_the_body_timeout(
        start_api: Callable[..., ApiProcess], model_path: Path) -> None:  # fmt: skip
    """200 connections each holding 1 MiB - 1 KiB of a 1 MiB body: at most about one body each, then cut."""
    api = start_api(model_uri=str(model_path), body_timeout_seconds="4", log_level="warning")
    api.wait_ready()
    before = memory_mb(api)["VmRSS"]
    head = b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % MiB
    socks = []
    for _ in range(200):
        sock = connect(api)
        sock.sendall(head + b" " * (MiB - 1024))
        socks.append(sock)
    held = memory_mb(api)
    # Each connection holds at most its body (MAX_BODY_BYTES), plus the server's read buffers.
    assert held["VmHWM"] - before < 200 * 1.3 + 40, (before, held)
    started = time.monotonic()
    for sock in socks:
        sock.settimeout(0.2)
        closed_after(sock, started, 10)
        sock.close()
    assert api.http.get("/health").status_code == 200


def test_sigterm_under_load_drains_and_exits_0(start_api: Callable[..., ApiProcess], model_path: Path) -> None:
    """16 keep-alive clients posting /predict; SIGTERM mid-run: no failed request, each client's last answer
    says `Connection: close`, /ready answers 503 meanwhile, exit status 0. A refused reconnect is retried."""
    api = start_api(model_uri=str(model_path), log_level="warning")
    api.wait_ready()
    body = api.http.post("/predict", json=EXAMPLE_REQUEST).request.content
    stop = threading.Event()
    failures: list[str] = []
    last: dict[int, str | None] = {}
    counts: dict[int, int] = {}

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        counts[i] = 0
        while not stop.is_set():
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
            except ConnectionRefusedError:
                conn.close()
                time.sleep(0.05)
                continue
            except Exception as exc:  # a reset or a cut response: what the drain must prevent
                failures.append(f"client {i}: {exc!r}")
                conn.close()
                return
            if response.status != 200:
                failures.append(f"client {i}: status {response.status}")
            last[i] = response.getheader("connection")
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(counts) == 16 and min(counts.values()) >= 5, 10, "load on all 16 connections")
    probe = http.client.HTTPConnection("127.0.0.1", api.port, timeout=5)
    probe.request("GET", "/ready")
    probe.getresponse().read()  # an open keep-alive connection, as a load balancer's
    api.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    probe.request("GET", "/ready")
    ready = probe.getresponse()
    ready_status, ready_body = ready.status, ready.read()
    code = api.proc.wait(20)
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == [], failures
    assert code == 0, api.log()[-2000:]
    assert ready_status == 503 and b'"shutting_down"' in ready_body
    assert all(value == "close" for value in last.values()), last


def _raw_exchange(api: ApiProcess, request: bytes) -> bytes:
    with connect(api) as sock:
        sock.sendall(request)
        sock.settimeout(1)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return data


@pytest.mark.parametrize("path", ["/health", "/ready", "/model/info", "/metrics", "/openapi.json"])
def test_head_answers_like_get_without_a_body(quick_api: ApiProcess, path: str) -> None:
    get = quick_api.http.get(path)
    head = quick_api.http.head(path)
    assert head.status_code == get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"] and head.content == b""
    # On the wire: no body after the HEAD's headers, so the next response on the connection parses.
    data = _raw_exchange(quick_api, f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\n"
                                    f"Connection: close\r\n\r\n".encode())
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and rest.startswith(b"HTTP/1.1 200 "), data[:300]


def test_head_where_get_is_not_allowed_is_405(quick_api: ApiProcess) -> None:
    response = quick_api.http.head("/predict")
    assert response.status_code == 405 and response.content == b"" and response.headers["allow"] == "POST"


@pytest.mark.parametrize(("context", "status"), [({"weekday": 2.0, "hour": 13.0}, 200), ({"weekday": 2}, 200),
                                                 ({"weekday": 2.5}, 422), ({"hour": 1e3}, 422)])
def test_integral_floats_are_integers(quick_api: ApiProcess, context: dict[str, Any], status: int) -> None:
    response = quick_api.http.post("/predict", json={**EXAMPLE_REQUEST, "context": context})
    assert response.status_code == status, response.text
    if status == 422:
        field = f"context.{next(iter(context))}"
        assert response.json()["error"]["message"].startswith(f"{field}: ")


def test_schema_states_the_object_form_key_rule(quick_api: ApiProcess) -> None:
    schemas = quick_api.http.get("/openapi.json").json()["components"]["schemas"]
    keyed = schemas["KeyedBasketLine"]
    assert "must equal the line's key" in keyed["description"]
    assert "must equal the line's key" in keyed["properties"]["product_id"]["description"]
    weekday = schemas["BasketContext"]["properties"]["weekday"]["anyOf"][0]
    assert weekday["type"] == "integer"  # and 2.0 is accepted, as JSON Schema's integer admits it
