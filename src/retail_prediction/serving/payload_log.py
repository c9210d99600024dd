"""The sampled payload log: a share of the requests (PAYLOAD_LOG_SAMPLE_RATE, off by default) kept as gzip
JSON-lines parts in a directory or under an S3 prefix, for the drift report (`retail-prediction monitor`).

A request pays only for the sampling draw and, when sampled, for appending a reference to a bounded queue
(`offer`): encoding, customer-id hashing, gzip and the writes happen in one background thread. A full queue
drops the record and counts it; a failing or slow sink keeps at most `MAX_PENDING_PARTS` finished parts for
retry, counting the records of any part it gives up as failed; warnings are rate-limited; the thread survives
any exception. Parts are named `prefix/dt=YYYY-MM-DD/hour=HH/part-<time>-<host>-<pid>-<seq>.jsonl.gz`
(UTC, the pod's host name), so pods never overwrite each other's parts. `stop` flushes what is queued.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import socket
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from random import random
from typing import Any, NamedTuple, Protocol

import msgspec

from ..artifact.s3 import StoreError, make_s3_client, put_bytes
from ..contract import Basket
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("retail_prediction.payload_log")

# Finished parts kept in memory while the sink fails; beyond it the oldest is given up (records failed).
MAX_PENDING_PARTS = 8
# Retries of a failed write wait this long at first, doubling up to the max.
RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS = 1.0, 60.0
# How often the writer wakes to take what the requests queued (the requests never signal it).
POLL_SECONDS = 0.2
# Shutdown waits this long for the last parts, inside Kubernetes' 30 s grace period after the drain.
STOP_SECONDS = 8.0
# One warning of a kind per this many seconds; the rest are counted in the next one.
WARN_EVERY_SECONDS = 60.0
# The sink's own S3 client: short timeouts and few attempts, so a hanging store costs the writer seconds.
S3_TIMEOUTS = {"connect_timeout": 3.0, "read_timeout": 10.0, "max_attempts": 2}


class Entry(NamedTuple):
    """A sampled request on the queue: references only, encoded later by the writer (one line per basket)."""

    at: float  # wall-clock time of the answer
    request_id: str
    route: str
    model_version: str
    baskets: Sequence[Basket]
    answers: Sequence[dict[str, Any]]
    latency_s: float | None


class Sink(Protocol):
    def write(self, key: str, data: bytes) -> None:
        """Write one part under `key` (a relative path), StoreError on failure."""


class DirSink:
    """Parts as files under a directory, each written to a temporary name and renamed (never seen half)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(self, key: str, data: bytes) -> None:
        path = self.root / key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            reason = "access_denied" if isinstance(exc, PermissionError) else "io"
            raise StoreError(reason, f"cannot write {path}: {exc.strerror or exc}") from exc


class S3Sink:
    """Parts as objects under s3://bucket/prefix, through the store's client construction (IRSA and
    endpoint overrides as for models), with its own short timeouts."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix
        self._client: Any = None

    def write(self, key: str, data: bytes) -> None:
        if self._client is None:
            self._client = make_s3_client(**S3_TIMEOUTS)  # type: ignore[arg-type]
        put_bytes(self.bucket, self.prefix + key, data, client=self._client, content_type="application/gzip")


def sink_for(uri: str) -> Sink:
    """`s3://bucket/prefix` or a local directory (ValueError when the URI names no bucket)."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[5:].partition("/")
        if not bucket:
            raise ValueError(f"PAYLOAD_LOG_URI={uri!r} names no bucket")
        return S3Sink(bucket, prefix.strip("/") + "/" if prefix.strip("/") else "")
    return DirSink(Path(uri.removeprefix("file://")).expanduser())


def customer_hasher(settings: Settings) -> hmac.HMAC | None:
    """The keyed hash of PAYLOAD_LOG_CUSTOMER_ID=hash. Keyed because customer ids are few and guessable:
    a plain SHA-256 of every candidate id would undo a plain hash, an HMAC cannot be undone without the key."""
    if settings.payload_log_customer_id != "hash":
        return None
    if settings.payload_log_hash_key is not None:
        key = settings.payload_log_hash_key.get_secret_value().encode()
    elif settings.payload_log_hash_key_file is not None:
        try:
            key = settings.payload_log_hash_key_file.read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"PAYLOAD_LOG_HASH_KEY_FILE={settings.payload_log_hash_key_file}: {exc.strerror}") from exc
    else:
        raise ValueError("PAYLOAD_LOG_CUSTOMER_ID=hash needs PAYLOAD_LOG_HASH_KEY or PAYLOAD_LOG_HASH_KEY_FILE")
    if not key:
        raise ValueError("the payload log's hash key is empty")
    return hmac.new(key, digestmod=hashlib.sha256)


def describe(settings: Settings) -> dict[str, Any]:
    """What /model/info shows of the payload log (no key, no credentials)."""
    return {"enabled": settings.payload_log_sample_rate > 0, "sample_rate": settings.payload_log_sample_rate,
            "uri": settings.payload_log_uri, "customer_id": settings.payload_log_customer_id}


class _RateLimitedWarning:
    """At most one warning per `reason` every WARN_EVERY_SECONDS; the next one says how many were held back."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, int]] = {}  # reason -> (when last said, held back since)

    def __call__(self, message: str, *, reason: str) -> None:
        now = time.monotonic()
        said, held = self.last.get(reason, (-WARN_EVERY_SECONDS, 0))
        if now - said < WARN_EVERY_SECONDS:
            self.last[reason] = (said, held + 1)
            return
        if held:
            message = f"{message} ({held} more since the last warning)"
        self.last[reason] = (now, 0)
        log.warning(message, extra={"reason": reason})


class _Part:
    """A part being filled: gzip-compressed as records come, so it holds compressed bytes only."""

    def __init__(self, hour: str, opened_at: float) -> None:
        self.hour, self.opened_at, self.opened = hour, opened_at, time.monotonic()
        # Level 1: ~1/3 of level 6's CPU, parts ~1.6x as large (10x smaller than the JSON; docs/benchmarks.md).
        # wbits 31: a gzip member.
        self.gzip = zlib.compressobj(1, zlib.DEFLATED, 31)
        self.chunks: list[bytes] = []
        self.raw_bytes = self.records = 0

    def add(self, line: bytes) -> None:
        self.chunks.append(self.gzip.compress(line))
        self.raw_bytes += len(line)
        self.records += 1

    def close(self) -> bytes:
        self.chunks.append(self.gzip.flush())
        return b"".join(self.chunks)


class _Pending(NamedTuple):
    key: str
    data: bytes
    records: int


class PayloadLog:
    """The sampled log of one service: `offer` on the request path, one writer thread between `start`/`stop`."""

    def __init__(self, settings: Settings, metrics: Metrics, *, sink: Sink | None = None,
                 host: str | None = None) -> None:
        self.rate = settings.payload_log_sample_rate
        self.metrics = metrics
        self.settings = settings
        self._sink = sink
        self._host = re.sub(r"[^A-Za-z0-9.-]", "-", host or socket.gethostname())[:63] or "host"
        self._max_records, self._max_lines = settings.payload_log_queue_records, settings.payload_log_queue_lines
        self._queue: deque[Entry] = deque()
        self._queued = self._queued_lines = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._part: _Part | None = None
        self._pending: deque[_Pending] = deque()
        self._retry_at, self._retry_delay = 0.0, RETRY_INITIAL_SECONDS
        self._seq = 0
        self._second: tuple[int, str, str] = (-1, "", "")  # the last whole second formatted (see _clock)
        self._warn = _RateLimitedWarning()
        self._encoder = msgspec.json.Encoder()
        self._hasher: hmac.HMAC | None = None
        self._written, self._dropped, self._failed = (metrics.payload_log.records.labels(o)
                                                      for o in ("written", "dropped", "failed"))
        metrics.payload_log.queued.set_function(lambda: self._queued)

    # ---- the request path

    def offer(self, scope: dict[str, Any], model_version: str, baskets: Sequence[Basket],
              answers: Sequence[dict[str, Any]]) -> None:
        """Queue this request's baskets and answers when it is sampled; never blocks, never raises."""
        if not self.rate or random() >= self.rate:
            return
        started = scope.get("request_started")
        latency = time.perf_counter() - started if started is not None else None
        route = getattr(scope.get("route"), "path", None) or scope.get("path", "")
        self.enqueue(Entry(time.time(), scope.get("request_id", ""), route, model_version, baskets, answers,
                            latency))

    def enqueue(self, entry: Entry) -> None:
        """Queue a record whatever the sampling (a sampled request; a test or a replay with its own times):
        dropped and counted when the queue is full."""
        baskets = entry.baskets
        records, lines = len(baskets), sum(len(b.basket_items) for b in baskets)
        with self._lock:
            full = self._queued + records > self._max_records or self._queued_lines + lines > self._max_lines
            if not full:
                self._queue.append(entry)
                self._queued += records
                self._queued_lines += lines
        if full:
            self._dropped.inc(records)

    # ---- lifecycle

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def start(self) -> None:
        """Start the writer (when sampling is on): the sink and the hash key are checked here, at start-up."""
        if not self.enabled or self._thread is not None:
            return
        assert self.settings.payload_log_uri  # Settings refuses a rate without a URI
        self._sink = self._sink or sink_for(self.settings.payload_log_uri)
        self._hasher = customer_hasher(self.settings)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._thread.start()
        log.info(f"payload log on: {self.rate:.2%} of requests to {self.settings.payload_log_uri}, customer ids "
                 f"{self.settings.payload_log_customer_id}", extra={"payload_log_uri": self.settings.payload_log_uri})

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Write what is queued and stop the writer (waits at most `timeout` seconds)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            log.warning(f"payload log: the last parts were not written within {timeout:.0f}s of shutdown",
                        extra={"queued_records": self._queued, "pending_parts": len(self._pending)})

    # ---- the writer thread

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(POLL_SECONDS)
            try:
                self._drain()
                part = self._part
                if part and (stopping or time.monotonic() - part.opened >= self.settings.payload_log_flush_seconds):
                    self._finish_part()
                self._write_pending(final=stopping)
            except Exception as exc:  # the writer must outlive any bug or sink surprise
                self._warn(f"payload log writer error: {exc!r}", reason="writer_error")
            if stopping:
                return

    def _take(self) -> list[Entry]:
        with self._lock:
            entries = list(self._queue)
            self._queue.clear()
            self._queued = self._queued_lines = 0
        return entries

    def _clock(self, at: float) -> tuple[str, str]:
        """(ISO time with microseconds, `dt=…/hour=…`) of a Unix time; formatted once per whole second."""
        whole = int(at)
        if self._second[0] != whole:
            moment = datetime.fromtimestamp(whole, UTC)
            self._second = (whole, moment.strftime("%Y-%m-%dT%H:%M:%S"), moment.strftime("dt=%Y-%m-%d/hour=%H"))
        return f"{self._second[1]}.{int((at - whole) * 1e6):06d}Z", self._second[2]

    def _drain(self) -> None:
        for entry in self._take():
            try:
                at, hour = self._clock(entry.at)
                lines = self._encode(entry, at)
            except Exception as exc:
                self._failed.inc(len(entry.baskets))
                self._warn(f"payload log: a record could not be encoded: {exc!r}", reason="encode_error")
                continue
            for line in lines:
                if self._part is not None and self._part.hour != hour:
                    self._finish_part()
                if self._part is None:
                    self._part = _Part(hour, entry.at)
                self._part.add(line)
                if self._part.raw_bytes >= self.settings.payload_log_part_bytes:
                    self._finish_part()

    def _encode(self, entry: Entry, at: str) -> list[bytes]:
        """One JSON line per basket: time, request id, route, model version, basket, answer, latency."""
        latency = round(entry.latency_s * 1000, 3) if entry.latency_s is not None else None
        batch = len(entry.baskets) > 1 or entry.route.endswith("/batch")
        out = []
        for index, (basket, answer) in enumerate(zip(entry.baskets, entry.answers, strict=True)):
            record: dict[str, Any] = {"time": at, "request_id": entry.request_id, "route": entry.route,
                                      "model_version": entry.model_version}
            if batch:
                record["index"] = index
            customer = basket.customer_id
            if customer is not None and self.settings.payload_log_customer_id != "keep":
                basket = msgspec.structs.replace(basket, customer_id=None)  # the struct is encoded as is
                if self._hasher is not None:
                    mac = self._hasher.copy()
                    mac.update(customer.encode())
                    record["customer_id_hmac"] = mac.hexdigest()
            record.update(basket=basket, answer=answer, latency_ms=latency)
            out.append(self._encoder.encode(record) + b"\n")
        return out

    def _finish_part(self) -> None:
        part, self._part = self._part, None
        if part is None or not part.records:
            return
        self._seq += 1
        stamp = datetime.fromtimestamp(part.opened_at, UTC).strftime("%Y%m%dT%H%M%S%fZ")
        key = f"{part.hour}/part-{stamp}-{self._host}-{os.getpid()}-{self._seq:06d}.jsonl.gz"
        self._pending.append(_Pending(key, part.close(), part.records))
        if len(self._pending) > MAX_PENDING_PARTS:  # a large drain: write as it goes (unless backing off)
            self._write_pending(final=False)
        while len(self._pending) > MAX_PENDING_PARTS:
            lost = self._pending.popleft()
            self._failed.inc(lost.records)
            self._warn(f"payload log: gave up part {lost.key} ({lost.records} records): the sink keeps failing",
                       reason="pending_full")

    def _write_pending(self, final: bool) -> None:
        """Write the finished parts in order; after a failure wait (backoff) unless shutting down, where one
        attempt each is all there is and what fails is counted as failed."""
        if not final and time.monotonic() < self._retry_at:
            return
        assert self._sink is not None
        while self._pending:
            part = self._pending[0]
            try:
                self._sink.write(part.key, part.data)
            except Exception as exc:  # StoreError with its reason; anything else is a surprise, same handling
                reason = exc.reason if isinstance(exc, StoreError) else "error"
                self.metrics.payload_log.sink_failures.labels(reason).inc()
                self._warn(f"payload log: cannot write a part, will retry: {exc}", reason=reason)
                if final:
                    for lost in self._pending:
                        self._failed.inc(lost.records)
                    self._pending.clear()
                    return
                self._retry_at = time.monotonic() + self._retry_delay
                self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)
                return
            self._pending.popleft()
            self._written.inc(part.records)
            self.metrics.payload_log.last_write.set(time.time())
            self._retry_delay = RETRY_INITIAL_SECONDS
