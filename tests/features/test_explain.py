"""Explanations: the contributions add up to the feature they explain, the file and API paths agree, and the
compiled calls refuse what they cannot explain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retail_prediction.contract import BasketLine
from retail_prediction.data.baskets import table_to_baskets
from retail_prediction.data.reading import read_transactions
from retail_prediction.features import explain_kernel
from retail_prediction.features.client import client_features
from retail_prediction.features.explain import explain_clients, explain_encoded
from retail_prediction.features.tables import encode
from retail_prediction.serving.predictor import Predictor

from .test_featurization import _items_of


@pytest.fixture(scope="module")
def scored(model_and_week: tuple[Path, Path]):
    model, week = model_and_week
    predictor = Predictor.load(model)
    later = table_to_baskets(read_transactions(week))
    items: list = [_items_of(later, b) for b in range(60)]
    items[1] = {line.product_id: line for line in items[1]}  # the object form
    items[2] = [BasketLine("NEW-1", 1, 2.0, "unknown-category"), *items[2]]
    best = predictor.score(items).proba.argmax(axis=1)
    return predictor, later, items, best


def test_contributions_add_up_to_the_evidence_feature(scored) -> None:
    predictor, _, items, best = scored
    tables = predictor.tables
    features, _ = client_features(items, tables)
    names = tables.feature_names()
    for why, row, c, lines in zip(explain_clients(items, best, tables), features, best, items, strict=True):
        cls = tables.classes[c]
        assert why["class"] == cls and why["prior"] == pytest.approx(tables.prior_share[c])
        assert why["evidence"] == pytest.approx(row[names.index(f"p_mean_{cls}")], abs=1e-6)
        contributions = [line["contribution"] for line in why["lines"]]
        assert sum(contributions) == pytest.approx(why["evidence"] - why["prior"], abs=1e-12)
        assert len(why["lines"]) == len(lines)
        positive = sorted((a for a in contributions if a > 0), reverse=True)[:3]
        assert [d["contribution"] for d in why["drivers_for"]] == positive
        negative = sorted(a for a in contributions if a < 0)[:3]
        assert [d["contribution"] for d in why["drivers_against"]] == negative
        for d in why["drivers_for"] + why["drivers_against"]:
            assert why["lines"][d["line"]]["product_id"] == d["product_id"]


def test_files_and_requests_explain_alike(scored) -> None:
    predictor, later, items, best = scored
    tables = predictor.tables
    lines = later.lines.basket_range(3, 60)
    products = lines.product.values[lines.product.index].tolist()
    from_files = explain_encoded(encode(lines, tables), lines.spend, lines.quantity, lines.basket, best[3:],
                                 products, tables)
    for file_why, api_why in zip(from_files, explain_clients(items[3:], best[3:], tables), strict=True):
        assert file_why["class"] == api_why["class"]
        for a, b in zip(file_why["lines"], api_why["lines"], strict=True):
            assert {k: a[k] for k in ("product_id", "points_to", "source", "known")} == {
                k: b[k] for k in ("product_id", "points_to", "source", "known")}
            # The API rebuilds spend from quantity x unit price: equal to rounding.
            assert a["contribution"] == pytest.approx(b["contribution"], rel=1e-6, abs=1e-9)


def test_the_compiled_calls_refuse_what_they_cannot_explain(scored) -> None:
    predictor, _, items, best = scored
    tables = predictor.tables
    with pytest.raises(ValueError, match="predicted class"):
        explain_clients(items[:2], [0, tables.n_classes], tables)
    with pytest.raises(ValueError, match="one predicted class per basket"):
        explain_clients(items[:2], [0], tables)
    with pytest.raises(ValueError, match="top"):
        explain_clients(items[:2], best[:2], tables, top=0)
    assert explain_clients([], [], tables) == []
    shuffled = np.array([1, 0], dtype=np.int32)
    with pytest.raises(ValueError, match="grouped by basket"):
        explain_kernel.explain_lines(np.zeros((len(tables.levels), 2), dtype=np.int32), np.ones(2), np.ones(2),
                                     shuffled, np.zeros(2, dtype=np.int32), tables.kernel, ["a", "b"], tables.classes,
                                     tables.source_names, 3)
