"""Drift of live traffic against the model's reference profile: population stability index (PSI) of basket
features and of the predicted class mix, over a rolling window of the latest baskets.

The request path only appends a reference to the feature rows it already computed (one deque append); the
binning and counting run in bulk, once per window's worth of baskets or at scrape time. PSI reading: < 0.1
stable, 0.1-0.25 moderate shift, > 0.25 major shift (docs/operations.md).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..artifact.members import FeatureProfile, Profile

# Shares below this are raised to it on both sides, so an empty bin gives a finite, bounded term.
EPSILON = 1e-4


def psi(expected_shares: Sequence[float] | np.ndarray, actual_counts: np.ndarray) -> float:
    """Population stability index of observed counts against reference shares (same bins)."""
    actual = np.asarray(actual_counts, dtype=np.float64)
    total = actual.sum()
    if total <= 0:
        return 0.0
    a = np.maximum(actual / total, EPSILON)
    e = np.maximum(np.asarray(expected_shares, dtype=np.float64), EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def bin_counts(feature: FeatureProfile, values: np.ndarray) -> np.ndarray:
    """How many of `values` fall in each of the feature's bins (len(edges)+1 counts); NaN counts in the last."""
    bins = np.searchsorted(np.asarray(feature.edges, dtype=np.float64), values, side="right")
    return np.bincount(bins, minlength=len(feature.shares))[: len(feature.shares)]


def class_counts(predicted: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(predicted, dtype=np.int64), minlength=n_classes)[:n_classes]


@dataclass(frozen=True)
class DriftSnapshot:
    baskets: int
    input: dict[str, float]  # feature name -> PSI
    prediction: float


def profile_psi(profile: Profile, feature_names: Sequence[str], features: np.ndarray,
                predicted: np.ndarray) -> DriftSnapshot:
    """PSI of a set of baskets (their feature rows and predicted class indexes) against `profile`."""
    columns = _columns(profile, feature_names)
    inputs = {name: psi(f.shares, bin_counts(f, features[:, columns[name]]))
              for name, f in profile.features.items()}
    return DriftSnapshot(int(features.shape[0]), inputs,
                         psi(profile.class_shares, class_counts(predicted, len(profile.classes))))


def _columns(profile: Profile, feature_names: Sequence[str]) -> dict[str, int]:
    names = list(feature_names)
    return {name: names.index(f.column) for name, f in profile.features.items() if f.column in names}


class DriftWindow:
    """The latest `size` baskets' profile columns and predicted classes, and their PSI on demand.

    `observe` is called on every scoring call, from the event loop or worker threads: it appends to a deque
    (thread-safe, no lock) and, once a window's worth is pending, folds it in under a lock that a second
    thread never waits for. `snapshot` (at scrape time) folds what is pending and computes the PSI.
    """

    def __init__(self, profile: Profile, feature_names: Sequence[str], size: int) -> None:
        self.profile = profile
        self.size = size
        columns = _columns(profile, feature_names)
        self._features = {name: f for name, f in profile.features.items() if name in columns}
        self._columns = [columns[name] for name in self._features]
        self._pending: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._values = np.zeros((0, len(self._columns)))
        self._predicted = np.zeros(0, dtype=np.int64)

    @classmethod
    def for_model(cls, profile: Profile | None, feature_names: Sequence[str], size: int) -> DriftWindow | None:
        """The window of a model, or None when it has no profile (older archives) or monitoring is off."""
        return cls(profile, feature_names, size) if profile is not None and size > 0 else None

    def observe(self, features: np.ndarray, predicted: np.ndarray) -> None:
        """Scored baskets: their feature rows and predicted class indexes (kept by reference, not copied)."""
        self._pending.append((features, predicted))
        self._pending_rows += len(predicted)
        if self._pending_rows >= self.size and self._lock.acquire(blocking=False):
            try:
                self._fold()
            finally:
                self._lock.release()

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            self._fold()
            values, predicted = self._values, self._predicted
        inputs = {name: psi(f.shares, bin_counts(f, values[:, j]))
                  for j, (name, f) in enumerate(self._features.items())}
        prediction = psi(self.profile.class_shares, class_counts(predicted, len(self.profile.classes)))
        return DriftSnapshot(len(predicted), inputs, prediction)

    def _fold(self) -> None:
        """Move the pending rows into the window, keeping the latest `size` (caller holds the lock)."""
        chunks = []
        while self._pending:  # popleft is atomic: rows appended meanwhile stay for the next fold
            chunks.append(self._pending.popleft())
        if not chunks:
            return
        self._pending_rows -= sum(len(p) for _, p in chunks)
        keep = self.size
        # Oldest first: the window's own rows, then the chunks in arrival order; the latest `keep` stay.
        # One concatenation of whole rows, then one column selection (not one per chunk: most are 1 row).
        rows = np.concatenate([features for features, _ in chunks])[-keep:, self._columns]
        predicted = np.concatenate([p for _, p in chunks])[-keep:]
        self._values = np.concatenate([self._values, rows])[-keep:].astype(np.float64, copy=False)
        self._predicted = np.concatenate([self._predicted, predicted])[-keep:].astype(np.int64, copy=False)
