"""Prometheus metrics of one app instance (own registry, so tests can build many apps in one process).

With WORKERS > 1 each worker process keeps its own numbers; Kubernetes scrapes pods, and the
deployment runs one worker per pod, so no multiprocess aggregation is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from ..artifact.s3 import REASONS as STORE_REASONS
from .drift import DriftWindow

# Latency buckets around the 10 ms target, with resolution below 1 ms where /predict lives.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Every series is named retail_prediction_*: one prefix for dashboards and alerts.
NAMESPACE = "retail_prediction"

# The *_created series double the output and nobody graphs them.
disable_created_metrics()


class ModelSeries:
    """A model's load and source-health series: the serving model's as retail_prediction_model_* and
    retail_prediction_source_*, a shadow model's (`prefix="shadow_"`) as retail_prediction_shadow_*."""

    def __init__(self, registry: CollectorRegistry, prefix: str = "") -> None:
        counter, gauge = (partial(kind, registry=registry, namespace=NAMESPACE) for kind in (Counter, Gauge))
        what = "shadow model" if prefix else "model"
        self.model_loads = counter(f"{prefix}model_loads", f"{what.capitalize()} loads: kind=initial|reload, "
                                   "result=success|failure", ["kind", "result"])
        self.model_info = gauge(f"{prefix}model_info", f"The loaded {what} (value 1)", ["version", "sha256"])
        self.model_ready = gauge(f"{prefix}model_ready", f"1 when a verified, warmed-up {what} is loaded")
        self.model_loaded_at = gauge(f"{prefix}model_loaded_timestamp_seconds", f"When the {what} was loaded")
        self.source_check_failures = counter(f"{prefix}source_check_failures",
                                             f"Failed checks (probe or download) of the {what}'s source", ["reason"])
        self.source_last_success = gauge(f"{prefix}source_last_success_timestamp_seconds",
                                         f"When the {what}'s source last answered a check")
        self.model_fetches = counter(f"{prefix}model_fetches", f"Archives fetched (downloaded or opened) for the "
                                     f"{what}")
        self.model_refusals = counter(f"{prefix}model_refusals", f"Archives refused at load ({what}), by reason",
                                      ["reason"])
        # Failure series exist from the start at 0: one born at 1 on the first failure is invisible to
        # increase(), so a single failed reload or check would never alert.
        for kind in ("initial", "reload"):
            for result in ("success", "failure"):
                self.model_loads.labels(kind, result)
        for reason in STORE_REASONS:
            self.source_check_failures.labels(reason)

    def set_model(self, version: str, sha256: str, loaded_at: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version, sha256).set(1)
        self.model_ready.set(1)
        self.model_loaded_at.set(loaded_at)


class ShadowSeries:
    """What the shadow model did with the sampled baskets, beside its own load series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        counter, gauge = (partial(kind, registry=registry, namespace=NAMESPACE) for kind in (Counter, Gauge))
        self.model = ModelSeries(registry, "shadow_")
        self.scored = counter("shadow_scored_baskets", "Baskets the shadow model scored after the answer")
        self.dropped = counter("shadow_dropped_baskets", "Sampled baskets the shadow did not score, by reason "
                               "(queue_full: over SHADOW_QUEUE_BASKETS; not_ready: no shadow model loaded; "
                               "error: the shadow failed on them)", ["reason"])
        self.agreement = gauge("shadow_agreement_ratio", "Share of shadow-scored baskets where the shadow's "
                               "class equals the answered one (since the shadow model was loaded)")
        self.compared = counter("shadow_predictions", "Shadow-scored baskets by answered (primary) and shadow "
                                "class", ["primary", "shadow"])
        self.queued = gauge("shadow_queue_baskets", "Baskets waiting for the shadow model")


class PayloadLogSeries:
    """The sampled payload log: every sampled record ends written, dropped (the queue was full) or failed (its
    part could not be written); the outcomes exist from the start, so a rate can be alerted on at once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        counter, gauge = (partial(kind, registry=registry, namespace=NAMESPACE) for kind in (Counter, Gauge))
        self.records = counter("payload_log_records", "Sampled request records by outcome: written, dropped "
                               "(queue full), failed (the sink)", ["outcome"])
        for outcome in ("written", "dropped", "failed"):
            self.records.labels(outcome)
        self.queued = gauge("payload_log_queued_records", "Sampled records waiting for the writer")
        self.sink_failures = counter("payload_log_sink_failures", "Failed writes of a payload log part, by reason",
                                     ["reason"])
        self.last_write = gauge("payload_log_last_write_timestamp_seconds", "When a payload log part was last "
                                "written")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._predicted: dict[str, Any] = {}
        # Every series in this registry, named retail_prediction_*.
        counter, histogram = (partial(kind, registry=self.registry, namespace=NAMESPACE)
                              for kind in (Counter, Histogram))
        self.requests = counter("http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"])
        self.latency = histogram("http_request_duration_seconds", "Request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS)
        self.predictions = counter("predictions", "Baskets classified, by predicted class", ["label"])
        # The serving model's lifecycle and source health (load-time only, never per request).
        self.model = ModelSeries(self.registry)
        # How many baskets each model call scored: shows whether micro-batching is coalescing requests.
        self.scored_together = histogram("scoring_batch_baskets", "Baskets scored per model call",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.shadow: ShadowSeries | None = None  # set by `add_shadow` when a shadow model is configured
        self.cache_hits = counter("prediction_cache_hits", "Prediction cache hits")
        self.cache_misses = counter("prediction_cache_misses", "Prediction cache misses")
        # The sampled payload log (serving/payload_log.py).
        self.payload_log = PayloadLogSeries(self.registry)

    def add_shadow(self) -> ShadowSeries:
        """The shadow model's series (created once, only when a shadow model is configured)."""
        if self.shadow is None:
            self.shadow = ShadowSeries(self.registry)
        return self.shadow

    def watch_drift(self, window: Callable[[], DriftWindow | None]) -> None:
        """Export the drift gauges of `window()` (the serving model's window) at every scrape."""
        self.registry.register(_DriftCollector(window))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # Label lookups take a lock and build a key each time: keep the children per request kind.
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (self.requests.labels(route, method, str(status)),
                                              self.latency.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def count_predictions(self, labels: list[str]) -> None:
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        self.add_predictions(counts)

    def add_predictions(self, counts: Mapping[str, int]) -> None:
        """`counts[label]` more baskets classified as `label`."""
        for label, n in counts.items():
            if not n:
                continue
            child = self._predicted.get(label)
            if child is None:
                child = self._predicted[label] = self.predictions.labels(label)
            child.inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DriftCollector(Collector):
    """retail_prediction_*drift* gauges, computed at scrape time; absent while the model has no profile."""

    def __init__(self, window: Callable[[], DriftWindow | None]) -> None:
        self.window = window

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        window = self.window()
        if window is None:
            return
        snap = window.snapshot()
        size = GaugeMetricFamily(f"{NAMESPACE}_drift_window_baskets",
                                 "Baskets in the drift window (the latest DRIFT_WINDOW_BASKETS scored)")
        size.add_metric([], snap.baskets)
        yield size
        inputs = GaugeMetricFamily(f"{NAMESPACE}_input_drift_psi",
                                   "Population stability index of a basket feature in the drift window against "
                                   "the model's reference (< 0.1 stable, 0.1-0.25 moderate, > 0.25 major)",
                                   labels=["feature"])
        for feature, value in snap.input.items():
            inputs.add_metric([feature], value)
        yield inputs
        prediction = GaugeMetricFamily(f"{NAMESPACE}_prediction_drift_psi",
                                       "Population stability index of the predicted class mix in the drift window "
                                       "against the model's reference mix")
        prediction.add_metric([], snap.prediction)
        yield prediction


class AuthMetrics:
    """The authentication's series (AUTH_MODE keys or jwt), in an app's registry: who called, who was refused
    and why, the keys file and the JWKS. Made only when authentication is on."""

    OTHER = "other"  # the caller label of every caller past the first `max_callers`

    def __init__(self, registry: CollectorRegistry, max_callers: int) -> None:
        counter, gauge = (partial(kind, registry=registry, namespace=NAMESPACE) for kind in (Counter, Gauge))
        self.caller_requests = counter("caller_requests", "Authenticated requests by caller (key name or token "
                                       "subject; past the first AUTH_CALLER_LABELS callers: other)", ["caller"])
        self.failures = counter("auth_failures", "Requests refused by authentication, by reason", ["reason"])
        self.key_file_errors = counter("auth_key_file_errors", "Keys files refused (the previous keys stay)")
        self.keys_loaded = gauge("auth_keys", "Keys accepted now (AUTH_MODE=keys)")
        self.jwks_fetches = counter("auth_jwks_fetches", "JWKS fetches from the issuer, by result", ["result"])
        self._max_callers = max_callers
        self._callers: dict[str, Any] = {}
        self._named = 0
        self._failures: dict[str, Any] = {}

    def count_caller(self, caller: str) -> None:
        child = self._callers.get(caller)
        if child is None:
            if self._named < self._max_callers:
                self._named += 1
                child = self._callers[caller] = self.caller_requests.labels(caller)
            else:
                child = self.caller_requests.labels(self.OTHER)
                if len(self._callers) < 4 * self._max_callers:  # remembered, within a bound of its own
                    self._callers[caller] = child
        child.inc()

    def count_failure(self, reason: str) -> None:
        child = self._failures.get(reason)
        if child is None:
            child = self._failures[reason] = self.failures.labels(reason)
        child.inc()
