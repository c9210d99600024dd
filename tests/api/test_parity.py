"""Featurization parity: baskets of a later week (generated, and real when present), featurized by the
training path (file -> Arrow -> `table_to_baskets` -> `basket_features`) and by the API path (JSON -> checked
request structs -> `client_features`), must give the same features and the same probabilities."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from retail_prediction.api.decoding import decode_predict
from retail_prediction.api.schemas import Limits, request_types
from retail_prediction.data import lgsr
from retail_prediction.data.baskets import table_to_baskets
from retail_prediction.data.reading import read_transactions
from retail_prediction.features.client import client_features, encode_clients
from retail_prediction.features.tables import basket_features, encoded_features
from retail_prediction.serving.predictor import Predictor

N_BASKETS = 400
_CODES = {"prod_code_10": 0, "prod_code_20": 1, "prod_code_30": 2, "prod_code_40": 3}


@pytest.fixture(scope="module")
def later_baskets(model_and_week: tuple[Path, Path]) -> tuple[Any, list[dict[str, Any]]]:
    """A sample of a later week's baskets: the training-side `Baskets` and the same baskets as API JSON bodies."""
    table = read_transactions(model_and_week[1])
    basket_ids = table[lgsr.BASKET_ID].to_numpy().astype(str)
    ids = np.unique(basket_ids)
    chosen = np.random.default_rng(7).choice(ids, size=min(N_BASKETS, ids.size), replace=False)
    sample = table.filter(pa.array(np.isin(basket_ids, chosen)))
    baskets = table_to_baskets(sample)
    return baskets, _as_requests(baskets)


def _as_requests(baskets: Any) -> list[dict[str, Any]]:
    lines = baskets.lines
    requests: list[dict[str, Any]] = [{"basket_items": []} for _ in range(lines.n_baskets)]
    for i in range(lines.n_lines):
        item = {"product_id": str(lines.product.values[lines.product.index[i]]),
                "quantity": float(lines.quantity[i]), "price": float(lines.spend[i] / lines.quantity[i])}
        for name, level in _CODES.items():
            codes = lines.hierarchy[level]
            if codes is not None and codes.index[i] >= 0:
                item[name] = str(codes.values[codes.index[i]])
        requests[int(lines.basket[i])]["basket_items"].append(item)
    return requests


def test_api_features_equal_training_features(later_baskets: tuple[Any, list[dict[str, Any]]],
                                              model_and_week: tuple[Path, Path]) -> None:
    baskets, requests = later_baskets
    predictor = Predictor.load(model_and_week[0])
    trained = basket_features(baskets.lines, predictor.tables)
    parsed = [decode_predict(json.dumps(r).encode(), request_types(Limits())) for r in requests]
    served, _ = client_features([r.basket_items for r in parsed], predictor.tables)  # what /predict computes
    lines = encode_clients([r.basket_items for r in parsed], predictor.tables)  # the same loops, step by step
    np.testing.assert_array_equal(served, encoded_features(lines.enc, lines.spend, lines.quantity, lines.basket,
                                                           lines.n_baskets, predictor.tables))
    assert served.shape == trained.shape == (len(requests), len(predictor.feature_names))
    np.testing.assert_allclose(served, trained, rtol=1e-5, atol=1e-6)


def test_batch_endpoint_matches_training_predictions(later_baskets: tuple[Any, list[dict[str, Any]]],
                                                     make_client: Callable[..., TestClient],
                                                     model_and_week: tuple[Path, Path]) -> None:
    baskets, requests = later_baskets
    predictor = Predictor.load(model_and_week[0])
    client = make_client(model_uri=str(model_and_week[0]))
    expected = predictor.predict_features(basket_features(baskets.lines, predictor.tables))
    response = client.post("/predict/batch", json={"baskets": requests})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    served = np.array([[p["probabilities"][c] for c in predictor.classes] for p in predictions])
    np.testing.assert_allclose(served, expected, atol=1e-5)
