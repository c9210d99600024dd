"""Loading, verifying, warming up and hot-swapping the model, in one background thread.

The first load retries with exponential backoff until it succeeds (S3 may be down or the object not yet
published); each failure is one clear log line. Afterwards the source is polled every
MODEL_POLL_SECONDS: a new version is downloaded, verified (manifest hashes + optional SHA-256 pin),
loaded and warmed up *beside* the serving model and only then swapped in by a single reference
assignment, so a request always runs start to end on one model. A failed reload leaves the serving
model in place and is reported by /model/info and the metrics.

Every attempt first probes the source's version; a version whose archive was refused is not downloaded
again until it changes (at start-up too). Any exception of a load is a refusal with a reason: the thread
never dies, so a later good archive is always picked up.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..artifact.archive import ArtifactError
from ..artifact.s3 import StoreError
from ..artifact.store import ModelSource, fetch, probe_version
from .drift import DriftWindow
from .metrics import ModelSeries
from .predictor import Predictor, load_predictor
from .settings import Settings

log = logging.getLogger("retail_prediction.api.model")


@dataclass(frozen=True)
class LoadedModel:
    """A verified, warmed-up predictor and where it came from."""

    predictor: Predictor
    source_uri: str
    source_version: str
    loaded_at: datetime
    load_seconds: float
    drift: DriftWindow | None = None  # live traffic against the model's reference profile


@dataclass
class LoadStatus:
    """What /ready and /model/info report besides the model itself."""

    state: str = "loading"  # loading | ready | failed (first load still failing)
    reason: str | None = None  # short code of the last failure
    message: str | None = None  # the last failure in words
    attempts: int = 0
    last_check_at: datetime | None = None  # last check of the source, whatever its outcome
    last_success_at: datetime | None = None  # last check the source answered
    last_error: dict[str, Any] | None = None  # the last failed check: reason, message, at
    refused_version: str | None = None  # the source version whose archive was refused
    last_reload: dict[str, Any] = field(default_factory=dict)

    @property
    def last_check_ok(self) -> bool | None:
        if self.last_check_at is None:
            return None
        return self.last_error is None


def _freeze_long_lived() -> None:
    """Move what is alive now (app, model, tables) out of the collector's sight.

    Full collections walking the model's objects under load raised /predict's p99 tenfold
    (docs/benchmarks.md); frozen, every collection only walks request garbage.
    """
    gc.collect()
    gc.freeze()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class LoadFailed(Exception):
    """A load that did not give a serving model. ``version`` is set when the archive itself was refused
    (not the source unreachable): that version is then not fetched again until it changes."""

    def __init__(self, reason: str, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.version = version


class ModelManager:
    """Keeps one model loaded from one source: the serving model (`role="model"`, the source the settings
    name) or a shadow model (`role="shadow"`, its own source, series and no drift window)."""

    def __init__(self, settings: Settings, metrics: ModelSeries, *, role: str = "model",
                 source: Callable[[], ModelSource] | None = None, sha256: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.role = role
        self.sha256 = settings.model_sha256 if role == "model" else sha256
        self.status = LoadStatus()
        self.current: LoadedModel | None = None
        self.limits = settings.artifact_limits()
        self._refusal: LoadFailed | None = None  # the last refused archive, not fetched again until it changes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.source: ModelSource | None = (source or settings.model_source)()
        except ValueError as exc:
            self.source = None
            self._fail("bad_config", f"{role} source misconfigured: {exc}")

    def hold(self, predictor: Predictor, source_uri: str, load_seconds: float) -> LoadedModel:
        """Serve `predictor`, loaded by the caller (batch scoring of files): no source is polled."""
        model = LoadedModel(predictor, source_uri, predictor.sha256, _now(), load_seconds, self._drift(predictor))
        self._swap(model, "initial")
        return model

    # ---- lifecycle

    def start(self) -> None:
        if self.source is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"{self.role}-manager", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        self._initial_load()
        poll = self.settings.model_poll_seconds
        while poll > 0 and not self._stop.wait(poll):
            self.check_for_update()

    def _initial_load(self) -> None:
        delay = self.settings.model_retry_initial_seconds
        while not self._stop.is_set():
            self.status.attempts += 1
            if self._attempt("initial", retry_in=delay):
                return
            self._stop.wait(delay)
            delay = min(delay * 2, self.settings.model_retry_max_seconds)

    def check_for_update(self) -> bool:
        """Poll the source once; load and swap in a new version. True when a new model now serves."""
        return self._attempt("reload")

    # ---- one attempt: probe, then fetch + load + swap a version neither serving nor refused

    def _attempt(self, kind: str, retry_in: float | None = None) -> bool:
        try:
            version = self._probe(retry_in)
            if version is None or version == self._serving_version():
                return False
            if self._refusal is not None and version == self._refusal.version:
                if self.current is None:  # the source is back, with the archive it had: say so again
                    self.status.state, self.status.reason = "failed", self._refusal.reason
                    self.status.message = str(self._refusal)
                return False
            self._swap(self._load(version), kind)
            return True
        except LoadFailed as exc:
            self._load_failed(kind, exc, retry_in)
        except Exception as exc:  # a bug outside the load itself must not end the thread either
            self._load_failed(kind, LoadFailed("internal", f"{type(exc).__name__}: {exc}"), retry_in)
        return False

    def _serving_version(self) -> str | None:
        return self.current.source_version if self.current else None

    def _probe(self, retry_in: float | None) -> str | None:
        """The source's version, or None when it cannot be read (counted and logged as a failed check)."""
        assert self.source is not None
        try:
            version = probe_version(self.source)
        except StoreError as exc:
            self._source_checked(exc)
            if self.current is None:  # not serving yet: /ready must tell why
                self._fail(exc.reason, str(exc), retry_in)
            else:
                log.warning(f"{self.role} update check failed: {exc}",
                            extra={"reason": exc.reason, "source": self.source.uri})
            return None
        self._source_checked(None)
        return version

    def _source_checked(self, error: StoreError | None) -> None:
        now = _now()
        self.status.last_check_at = now
        if error is None:
            self.status.last_success_at, self.status.last_error = now, None
            self.metrics.source_last_success.set(now.timestamp())
        else:
            self.status.last_error = {"reason": error.reason, "message": str(error), "at": now.isoformat()}
            self.metrics.source_check_failures.labels(error.reason).inc()

    def _load(self, probed_version: str) -> LoadedModel:
        assert self.source is not None
        started = time.perf_counter()
        try:
            fetched = fetch(self.source, self.settings.model_dir, max_bytes=self.limits.max_download_bytes)
        except StoreError as exc:
            if exc.reason != "too_large":
                self._source_checked(exc)
                raise LoadFailed(exc.reason, str(exc)) from exc
            # An object over the download cap is the archive's fault, not the source's: refuse its version.
            raise LoadFailed(exc.reason, str(exc), probed_version) from exc
        self.metrics.model_fetches.inc()
        try:
            predictor = load_predictor(fetched.path, limits=self.limits, expected_sha256=self.sha256)
        except ArtifactError as exc:
            raise LoadFailed(exc.reason, f"artifact refused: {exc}", fetched.version) from exc
        except Exception as exc:  # whatever nobody foresaw (MemoryError included) is a refusal too
            raise LoadFailed("load_error", f"cannot load model from {self.source.uri}: "
                                           f"{type(exc).__name__}: {exc}", fetched.version) from exc
        return LoadedModel(predictor, self.source.uri, fetched.version, _now(), time.perf_counter() - started,
                           self._drift(predictor))

    def _drift(self, predictor: Predictor) -> DriftWindow | None:
        size = self.settings.drift_window_baskets if self.role == "model" else 0  # drift is the live model's
        return DriftWindow.for_model(predictor.profile, predictor.feature_names, size)

    def _load_failed(self, kind: str, exc: LoadFailed, retry_in: float | None) -> None:
        # Status and log line first, counters last: whoever sees the failure counted also finds its status.
        if exc.version is not None:
            self.status.refused_version, self._refusal = exc.version, exc
        if self.current is None:
            self._fail(exc.reason, str(exc), retry_in, exc.version)
        else:
            self.status.last_reload = {"result": "failure", "at": _now().isoformat(), "reason": exc.reason,
                                       "message": str(exc), "version": exc.version}
            log.error(f"{self.role} reload failed, keeping the loaded one: {exc}",
                      extra={"reason": exc.reason, "source": self.current.source_uri, "source_version": exc.version,
                             "model_version": self.current.predictor.version})
        self.metrics.model_loads.labels(kind, "failure").inc()
        if exc.version is not None:
            self.metrics.model_refusals.labels(exc.reason).inc()

    def _swap(self, model: LoadedModel, kind: str) -> None:
        previous = self.current
        p = model.predictor
        # Status and metrics first, the model last: whoever sees the new version also sees its status.
        self.status.state, self.status.reason, self.status.message = "ready", None, None
        self.status.refused_version, self._refusal = None, None
        self.metrics.model_loads.labels(kind, "success").inc()
        self.metrics.set_model(p.version, p.sha256, model.loaded_at.timestamp())
        if kind == "reload":
            self.status.last_reload = {
                "result": "success", "at": model.loaded_at.isoformat(), "version": p.version,
                "previous_version": previous.predictor.version if previous else None,
            }
        gc.unfreeze()  # let the model being replaced be collected
        self.current = model  # one reference assignment: atomic for every reader
        _freeze_long_lived()
        log.info(f"{self.role} {p.version} loaded from {model.source_uri} in {model.load_seconds:.2f}s ({kind})",
                 extra={"model_version": p.version, "sha256": p.sha256, "source": model.source_uri,
                        "source_version": model.source_version})

    def _fail(self, reason: str, message: str, retry_in: float | None = None, version: str | None = None) -> None:
        retry = f"; retrying in {retry_in:g}s" if retry_in is not None and math.isfinite(retry_in) else ""
        # The log line first: whoever sees the failed state (/ready, /model/info) also finds its line.
        log.error(f"{self.role} load failed ({reason}): {message}{retry}",
                  extra={"reason": reason, "attempt": self.status.attempts, "retry_in_s": retry_in,
                         "source": self.source.uri if getattr(self, "source", None) else None,
                         "source_version": version})
        self.status.state, self.status.reason, self.status.message = "failed", reason, message
