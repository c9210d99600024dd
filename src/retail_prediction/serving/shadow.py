"""Shadow scoring: a second, verified model scores a sample of live baskets after their answers went out,
so a candidate can be compared with the serving model on real traffic before it answers anyone.

The request path only samples and appends to a bounded queue (dropped and counted when full). One worker
thread drains it every POLL_SECONDS, scores the baskets with the shadow model and compares its classes with
the answered ones. The worker sleeps so that it scores at most SHADOW_MAX_CPU_SHARE of the time: the
shadow's CPU stays bounded whatever the traffic, and what it cannot take is dropped, visibly.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from ..contract import Basket
from .metrics import ShadowSeries
from .model_manager import LoadedModel, ModelManager
from .settings import Settings

log = logging.getLogger("retail_prediction.api.shadow")

POLL_SECONDS = 0.05
# Baskets per shadow model call: small, so that the GIL the call holds never stalls the answers for long.
CHUNK_BASKETS = 64


class ShadowScorer:
    def __init__(self, settings: Settings, metrics: ShadowSeries) -> None:
        self.metrics = metrics
        self.manager = ModelManager(settings, metrics.model, role="shadow", source=settings.shadow_source,
                                    sha256=settings.shadow_model_sha256)
        self.sample_rate = settings.shadow_sample_rate
        self.capacity = settings.shadow_queue_baskets
        self.max_cpu_share = settings.shadow_max_cpu_share
        self._queue: deque[tuple[Sequence[Basket], list[str]]] = deque()
        self._queued = 0
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()
        self._dropped = {reason: metrics.dropped.labels(reason) for reason in ("queue_full", "not_ready", "error")}
        # Per shadow version (reset when it changes): what /model/info shows.
        self.version: str | None = None
        self.scored = self.agreed = 0
        self.table: dict[tuple[str, str], int] = {}
        self.dropped: dict[str, int] = {}

    # ---- request path

    def offer(self, baskets: Sequence[Basket], labels: list[str]) -> None:
        """Scored baskets and their answered classes: sampled into the queue, or dropped when it is full."""
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        n = len(baskets)
        with self._count_lock:
            if self._queued + n > self.capacity:
                full = True
            else:
                full = False
                self._queued += n
        if full:
            self._drop("queue_full", n)
            return
        self._queue.append((baskets, labels))

    # ---- lifecycle

    def start(self) -> None:
        self.manager.start()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.manager.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            try:
                self.drain()
            except Exception as exc:  # the worker must outlive any bug: count, log, go on
                log.exception(f"shadow scoring failed: {type(exc).__name__}: {exc}")

    # ---- worker

    def drain(self) -> None:
        """Score what is queued (in chunks), pausing after each so the shadow's share of time stays bounded."""
        items = []
        while self._queue:
            items.append(self._queue.popleft())
        if not items:
            return
        baskets = [b for chunk, _ in items for b in chunk]
        labels = [label for _, chunk_labels in items for label in chunk_labels]
        with self._count_lock:
            self._queued -= len(baskets)
        self.metrics.queued.set(self._queued)
        model = self.manager.current
        if model is None:
            self._drop("not_ready", len(baskets))
            return
        for start in range(0, len(baskets), CHUNK_BASKETS):
            started = time.perf_counter()
            self._score(model, baskets[start:start + CHUNK_BASKETS], labels[start:start + CHUNK_BASKETS])
            busy = time.perf_counter() - started
            if self._stop.wait(busy * (1 / self.max_cpu_share - 1)):
                return

    def _score(self, model: LoadedModel, baskets: list[Basket], answered: list[str]) -> None:
        predictor = model.predictor
        if predictor.version != self.version:  # a new shadow model: its comparison starts afresh
            self.version, self.scored, self.agreed, self.table, self.dropped = predictor.version, 0, 0, {}, {}
        try:
            proba = predictor.score([b.basket_items for b in baskets]).proba
        except Exception as exc:  # a shadow that fails on live baskets is reported, never raised
            self._drop("error", len(baskets))
            log.warning(f"shadow model {predictor.version} failed on {len(baskets)} baskets: {exc}")
            return
        classes = predictor.classes
        shadow = [classes[i] for i in proba.argmax(axis=1).tolist()]
        for (primary, shadowed), n in Counter(zip(answered, shadow, strict=True)).items():
            self.table[primary, shadowed] = self.table.get((primary, shadowed), 0) + n
            self.agreed += n if primary == shadowed else 0
            self.metrics.compared.labels(primary, shadowed).inc(n)
        self.scored += len(shadow)
        self.metrics.scored.inc(len(shadow))
        self.metrics.agreement.set(self.agreed / self.scored)

    def _drop(self, reason: str, n: int) -> None:
        self._dropped[reason].inc(n)
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def info(self) -> dict[str, Any]:
        """The shadow for /model/info: which model, how it is fed, how it compares (since it was loaded)."""
        model, status = self.manager.current, self.manager.status
        return {
            "state": status.state, "reason": status.reason,
            "source_uri": self.manager.source.uri if self.manager.source else None,
            "model_version": model.predictor.version if model else None,
            "sha256": model.predictor.sha256 if model else None,
            "loaded_at": model.loaded_at.isoformat() if model else None,
            "sample_rate": self.sample_rate, "max_cpu_share": self.max_cpu_share,
            "scored_baskets": self.scored, "dropped_baskets": dict(self.dropped),
            "agreement_ratio": round(self.agreed / self.scored, 4) if self.scored else None,
            "answered_vs_shadow": [{"answered": a, "shadow": s, "baskets": n}
                                   for (a, s), n in sorted(self.table.items())],
        }

