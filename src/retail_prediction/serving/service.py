"""PredictionService: the one object that scores baskets, for the routes, the batch CLI and the tests.

It owns the model manager (which model serves), the answer cache and the micro-batcher, and decides how a
call runs: one basket through the micro-batcher on the event loop (a small featurization + ONNX run is
cheaper than a thread hand-off), a large batch split over worker threads so that probes stay answered.
Every path ends in `score`: cache, one featurization and one ONNX run for all the baskets, metrics. Files
(`retail-prediction predict` / `evaluate`) come as a line table and go through `score_lines`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from anyio.to_thread import run_sync

from ..artifact.members import ArtifactLimits
from ..contract import Basket, Lines, label_name
from .batcher import MicroBatcher
from .cache import BasketKey, PredictionCache, basket_key
from .metrics import Metrics
from .model_manager import LoadedModel, ModelManager
from .payload_log import PayloadLog
from .predictor import Predictor, Scores, load_predictor
from .settings import Settings
from .shadow import ShadowScorer

Answer = dict[str, Any]

# Above this many lines a call is scored in worker threads instead of on the event loop.
INLINE_MAX_LINES = 2000
# Large batches are split into this many chunks scored in parallel threads (one per core).
PARALLEL_CHUNKS = max(1, min(4, os.cpu_count() or 1))


class ModelNotReady(Exception):
    """No model serves yet (the first load is still running or failing): `state` and `reason` say why."""

    def __init__(self, state: str, reason: str | None, message: str | None) -> None:
        detail = f": {message}" if message else ""
        super().__init__(f"no model loaded yet ({state}){detail}")
        self.state, self.reason = state, reason


def answers(predictor: Predictor, scores: Scores, best: np.ndarray | None = None) -> list[Answer]:
    """Scores (and each basket's best class, if already known) -> one answer per basket: label, its name,
    every class's probability, unknown codes."""
    classes = predictor.classes
    best = scores.proba.argmax(axis=1) if best is None else best
    names = [label_name(c) for c in classes]
    return [{
        "label": classes[best], "label_name": names[best], "probabilities": dict(zip(classes, row, strict=True)),
        "unknown_products": n_products, "unknown_categories": n_categories,
    } for row, best, n_products, n_categories in zip(
        scores.proba.tolist(), best.tolist(), scores.unknown_products.tolist(),
        scores.unknown_categories.tolist(), strict=True)]  # fmt: skip


class PredictionService:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.manager = ModelManager(settings, self.metrics.model)
        # A second model scoring a sample of live baskets after the answer (SHADOW_MODEL_*), or None.
        self.shadow = ShadowScorer(settings, self.metrics.add_shadow()) if settings.shadow_configured else None
        self.metrics.watch_drift(lambda: model.drift if (model := self.manager.current) else None)
        self.cache = PredictionCache(settings.cache_size)
        self.batcher = MicroBatcher(self.score, max_lines=INLINE_MAX_LINES)
        # A sampled share of the requests and their answers, for the drift report (off by default).
        self.payload_log = PayloadLog(settings, self.metrics)
        self.draining = False  # set once the server begins its graceful shutdown

    def start(self) -> None:
        """Start loading (and polling) the model, the shadow model if one is configured, and the payload log's
        writer if sampling is on."""
        self.manager.start()
        if self.shadow is not None:
            self.shadow.start()
        self.payload_log.start()

    def stop(self) -> None:
        self.manager.stop()
        if self.shadow is not None:
            self.shadow.stop()
        self.payload_log.stop()  # after the drain: the last requests' records are written

    def begin_drain(self) -> None:
        """From now on the service is not ready (load balancers stop sending before the process goes)."""
        self.draining = True

    @classmethod
    def for_file(cls, path: Path, *, limits: ArtifactLimits | None = None,
                 intra_op_threads: int = 1) -> tuple[PredictionService, LoadedModel]:
        """A service that serves the archive at `path` only (batch scoring): loaded and checked as the server
        does it (`load_predictor`, ArtifactError if refused), with the default settings and no polling."""
        service = cls(Settings.model_construct(model_poll_seconds=0))
        started = time.perf_counter()
        predictor = load_predictor(path, limits=limits, intra_op_threads=intra_op_threads)
        return service, service.manager.hold(predictor, str(path), time.perf_counter() - started)

    def model(self) -> LoadedModel:
        """The serving model; ModelNotReady while there is none."""
        model = self.manager.current
        if model is None:
            status = self.manager.status
            raise ModelNotReady(status.state, status.reason, status.message)
        return model

    def model_version(self) -> str | None:
        model = self.manager.current
        return model.predictor.version if model else None

    async def predict(self, model: LoadedModel, basket: Basket) -> Answer:
        """One basket, run as PREDICT_EXECUTION says (micro-batched by default)."""
        mode = self.settings.predict_execution
        if mode == "batched":
            return await self.batcher.predict(model, basket)
        if mode == "threadpool":
            return (await run_sync(self.score, model, [basket]))[0]
        return self.score(model, [basket])[0]

    async def predict_batch(self, model: LoadedModel, baskets: list[Basket]) -> list[Answer]:
        """Many baskets, answers in order: small batches inline; large ones in worker threads, one chunk per
        core (ONNX Runtime releases the GIL, so one chunk's inference overlaps the next one's featurization,
        and the event loop keeps answering probes meanwhile)."""
        if sum(len(b.basket_items) for b in baskets) <= INLINE_MAX_LINES:
            return self.score(model, baskets)
        size = -(-len(baskets) // PARALLEL_CHUNKS)
        chunks = [baskets[i:i + size] for i in range(0, len(baskets), size)]
        parts = await asyncio.gather(*(run_sync(self.score, model, chunk) for chunk in chunks))
        return [answer for part in parts for answer in part]

    async def explain(self, model: LoadedModel, baskets: Sequence[Basket], scored: Sequence[Answer]) -> list[Answer]:
        """Why each basket got its answer's label (asked with `explain=true`; never cached): inline for a
        request's worth of lines, in a worker thread for a large batch."""
        classes = model.predictor.classes
        best = [classes.index(answer["label"]) for answer in scored]
        items = [b.basket_items for b in baskets]
        if sum(map(len, items)) <= INLINE_MAX_LINES:
            return model.predictor.explain(items, best)
        return await run_sync(model.predictor.explain, items, best)

    def score(self, model: LoadedModel, baskets: Sequence[Basket]) -> list[Answer]:
        """The scoring step every call ends in: cached baskets from the LRU, the rest in one featurization and
        one ONNX run, counted in the metrics."""
        if self.cache.enabled:
            result, hits = self._score_cached(model, baskets)
            self.metrics.cache_hits.inc(hits)
            self.metrics.cache_misses.inc(len(baskets) - hits)
        else:
            result = self._score(model, [b.basket_items for b in baskets])
        self.metrics.scored_together.observe(len(baskets))
        labels = [answer["label"] for answer in result]
        self.metrics.count_predictions(labels)
        if self.shadow is not None:
            self.shadow.offer(baskets, labels)
        return result

    def score_lines(self, model: LoadedModel, lines: Lines) -> np.ndarray:
        """Class probabilities (columns in `model.predictor.classes` order) of many baskets given as a line
        table grouped by basket (files): featurized and run in blocks on two threads, counted in the metrics."""
        proba = model.predictor.predict_batch(lines)
        counts = np.bincount(proba.argmax(axis=1), minlength=len(model.predictor.classes))
        self.metrics.add_predictions(dict(zip(model.predictor.classes, counts.tolist(), strict=True)))
        return proba

    @staticmethod
    def _score(model: LoadedModel, baskets: list[Any]) -> list[Answer]:
        """One featurization and ONNX run; the baskets join the drift window."""
        scores = model.predictor.score(baskets)
        best = scores.proba.argmax(axis=1)
        if model.drift is not None:
            model.drift.observe(scores.features, best)
        return answers(model.predictor, scores, best)

    def _score_cached(self, model: LoadedModel, baskets: Sequence[Basket]) -> tuple[list[Answer], int]:
        """Answers from the cache where it has them; the rest scored (only those join the drift window)."""
        keys: list[BasketKey] = [basket_key(model.predictor.sha256, b.basket_items) for b in baskets]
        found: list[Answer | None] = [self.cache.get(k) for k in keys]
        missing = [i for i, a in enumerate(found) if a is None]
        if missing:
            scored = self._score(model, [baskets[i].basket_items for i in missing])
            for i, answer in zip(missing, scored, strict=True):
                self.cache.put(keys[i], answer)
                found[i] = answer
        return [a for a in found if a is not None], len(baskets) - len(missing)
