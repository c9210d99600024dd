"""The reference profile stored in the artifact (profile.json) for drift monitoring: per basket feature, bin
edges and the share of baskets in each bin, and the predicted class mix, all on the held-out weeks.

Why the held-out weeks: there the model meets baskets as it will in serving, with products it has not seen;
on its training baskets every product is known and the unknown share would always be 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..artifact.members import PROFILE_VERSION

# Monitored feature -> its column in the feature matrix (the one featurization computes them all).
PROFILED = {"lines": "n_lines", "spend": "log_spend", "mean_unit_price": "mean_log_unit_price",
            "unknown_share": "unseen_product_share"}
QUANTILES = np.linspace(0.1, 0.9, 9)  # deciles


def bin_edges(values: np.ndarray) -> list[float]:
    """Interior cut points: the deciles, plus the smallest value and a hair above the largest, so that live
    values outside everything seen get bins of their own (a column that is always 0 still detects non-zeros)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [0.0]
    low, high = float(finite.min()), float(finite.max())
    edges = np.unique(np.concatenate([[low], np.quantile(finite, QUANTILES), [np.nextafter(high, np.inf)]]))
    return [float(e) for e in edges]


def shares(edges: Sequence[float], values: np.ndarray) -> list[float]:
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    return [float(c) for c in counts / max(1, values.size)]


def reference_profile(features: np.ndarray, feature_names: Sequence[str], predicted: np.ndarray,
                      classes: Sequence[str], weeks: Sequence[int]) -> dict[str, Any]:
    """profile.json's content from the held-out baskets' feature rows and the chosen model's predicted class
    indexes on them."""
    names = list(feature_names)
    profiled = {}
    for name, column in PROFILED.items():
        values = features[:, names.index(column)].astype(np.float64)
        edges = bin_edges(values)
        profiled[name] = {"column": column, "edges": edges, "shares": shares(edges, values)}
    mix = np.bincount(predicted, minlength=len(classes)) / max(1, predicted.size)
    return {"version": PROFILE_VERSION, "baskets": int(features.shape[0]), "weeks": [int(w) for w in weeks],
            "features": profiled, "classes": list(classes), "class_shares": [float(s) for s in mix]}
