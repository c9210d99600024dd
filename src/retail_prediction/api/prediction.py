"""Validated requests -> answers: one featurization and one ONNX run per call, however many baskets.

Cached baskets are answered from the LRU; the misses of a batch are still scored together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..predictor import LineItem, Predictor, encode_items
from ..schema import label_name
from .cache import BasketKey, PredictionCache, basket_key
from .schemas import HIERARCHY_FIELDS, PredictRequest, request_lines


def line_items(request: PredictRequest) -> list[LineItem]:
    return [LineItem(product, line["quantity"], line["price"], line.get("category"),
                     tuple(map(line.get, HIERARCHY_FIELDS)))
            for product, line in request_lines(request)]


def score(predictor: Predictor, requests: Sequence[PredictRequest]) -> list[dict[str, Any]]:
    """Answers for `requests`, in order (no cache)."""
    return score_items(predictor, [line_items(r) for r in requests])


def score_items(predictor: Predictor, baskets: Sequence[Sequence[LineItem]]) -> list[dict[str, Any]]:
    scores = predictor.score(*encode_items(baskets, predictor.tables))
    proba = scores.proba.tolist()
    unknown_products = scores.unknown_products.tolist()
    unknown_categories = scores.unknown_categories.tolist()
    classes = predictor.classes
    answers = []
    for row, n_products, n_categories in zip(proba, unknown_products, unknown_categories, strict=True):
        label = classes[max(range(len(row)), key=row.__getitem__)]
        answers.append({
            "label": label, "label_name": label_name(label),
            "probabilities": dict(zip(classes, row, strict=True)),
            "unknown_products": n_products, "unknown_categories": n_categories,
        })  # fmt: skip
    return answers


def score_cached(predictor: Predictor, requests: Sequence[PredictRequest],
                 cache: PredictionCache) -> tuple[list[dict[str, Any]], int]:
    """Like `score`, through the cache; also returns the number of cache hits."""
    if not cache.enabled:
        return score(predictor, requests), 0
    baskets = [line_items(r) for r in requests]
    keys: list[BasketKey] = [basket_key(predictor.sha256, items) for items in baskets]
    answers: list[dict[str, Any] | None] = [cache.get(k) for k in keys]
    missing = [i for i, a in enumerate(answers) if a is None]
    if missing:
        for i, answer in zip(missing, score_items(predictor, [baskets[i] for i in missing]), strict=True):
            cache.put(keys[i], answer)
            answers[i] = answer
    return [a for a in answers if a is not None], len(requests) - len(missing)
