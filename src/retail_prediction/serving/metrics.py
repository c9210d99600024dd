"""Prometheus metrics of one app instance (own registry, so tests can build many apps in one process).

With WORKERS > 1 each worker process keeps its own numbers; Kubernetes scrapes pods, and the
deployment runs one worker per pod, so no multiprocess aggregation is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
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
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets around the 10 ms target, with resolution below 1 ms where /predict lives.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Every series is named retail_prediction_*: one prefix for dashboards and alerts.
NAMESPACE = "retail_prediction"

# The *_created series double the output and nobody graphs them.
disable_created_metrics()


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._predicted: dict[str, Any] = {}
        # Every series in this registry, named retail_prediction_*.
        counter, gauge, histogram = (partial(kind, registry=self.registry, namespace=NAMESPACE)
                                     for kind in (Counter, Gauge, Histogram))
        self.requests = counter("http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"])
        self.latency = histogram("http_request_duration_seconds", "Request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS)
        self.predictions = counter("predictions", "Baskets classified, by predicted class", ["label"])
        self.model_loads = counter("model_loads", "Model loads: kind=initial|reload, result=success|failure",
                                   ["kind", "result"])
        self.model_info = gauge("model_info", "The loaded model (value 1)", ["version", "sha256"])
        self.model_ready = gauge("model_ready", "1 when a verified, warmed-up model serves")
        self.model_loaded_at = gauge("model_loaded_timestamp_seconds", "When the serving model was loaded")
        # How many baskets each model call scored: shows whether micro-batching is coalescing requests.
        self.scored_together = histogram("scoring_batch_baskets", "Baskets scored per model call",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        # Health of the model source and of the archives it serves (load-time only, never per request).
        self.source_check_failures = counter("source_check_failures",
                                             "Failed checks (probe or download) of the model source", ["reason"])
        self.source_last_success = gauge("source_last_success_timestamp_seconds",
                                         "When the model source last answered a check")
        self.model_fetches = counter("model_fetches", "Archives fetched (downloaded or opened) for loading")
        self.model_refusals = counter("model_refusals", "Archives refused at load, by reason", ["reason"])
        self.cache_hits = counter("prediction_cache_hits", "Prediction cache hits")
        self.cache_misses = counter("prediction_cache_misses", "Prediction cache misses")

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

    def set_model(self, version: str, sha256: str, loaded_at: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version, sha256).set(1)
        self.model_ready.set(1)
        self.model_loaded_at.set(loaded_at)

    def render(self) -> bytes:
        return generate_latest(self.registry)


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
