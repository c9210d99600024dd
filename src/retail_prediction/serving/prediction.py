"""Validated requests -> answers: one featurization and one ONNX run per call, however many baskets.

Cached baskets are answered from the LRU; the misses of a batch are still scored together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..contract import Basket, label_name
from .cache import BasketKey, PredictionCache, basket_key
from .predictor import Predictor, Scores


def score(predictor: Predictor, requests: Sequence[Basket]) -> list[dict[str, Any]]:
    """Answers for `requests`, in order (no cache)."""
    return answers(predictor, predictor.score([r.basket_items for r in requests]))


def answers(predictor: Predictor, scores: Scores) -> list[dict[str, Any]]:
    classes = predictor.classes
    names = [label_name(c) for c in classes]
    return [{
        "label": classes[best], "label_name": names[best], "probabilities": dict(zip(classes, row, strict=True)),
        "unknown_products": n_products, "unknown_categories": n_categories,
    } for row, best, n_products, n_categories in zip(
        scores.proba.tolist(), scores.proba.argmax(axis=1).tolist(), scores.unknown_products.tolist(),
        scores.unknown_categories.tolist(), strict=True)]  # fmt: skip


def score_cached(predictor: Predictor, requests: Sequence[Basket],
                 cache: PredictionCache) -> tuple[list[dict[str, Any]], int]:
    """Like `score`, through the cache; also returns the number of cache hits."""
    if not cache.enabled:
        return score(predictor, requests), 0
    keys: list[BasketKey] = [basket_key(predictor.sha256, r.basket_items) for r in requests]
    found: list[dict[str, Any] | None] = [cache.get(k) for k in keys]
    missing = [i for i, a in enumerate(found) if a is None]
    if missing:
        for i, answer in zip(missing, score(predictor, [requests[i] for i in missing]), strict=True):
            cache.put(keys[i], answer)
            found[i] = answer
    return [a for a in found if a is not None], len(requests) - len(missing)
