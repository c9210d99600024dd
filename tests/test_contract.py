"""The one typed contract: what the API decodes is the contract's types, and every form of a line carries
the same fields, which the compiled featurization reads the same way."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from retail_prediction.api.decoding import decode_batch, decode_predict
from retail_prediction.api.schemas import Limits, request_types
from retail_prediction.contract import (
    HIERARCHY_FIELDS,
    LINE_FIELDS,
    Basket,
    BasketBatch,
    BasketLine,
    KeyedBasketLine,
)


def test_decoded_requests_are_the_contracts_types() -> None:
    types = request_types(Limits(max_string_length=20))
    keyed = decode_predict(b'{"basket_items": {"P1": {"quantity": 2, "price": 1.5}}}', types)
    listed = decode_batch(b'{"baskets": [{"basket_items": [{"product_id": "P1", "quantity": 1, "price": 2}]}]}',
                          types)
    assert isinstance(keyed, Basket) and isinstance(keyed.basket_items["P1"], KeyedBasketLine)
    assert isinstance(listed, BasketBatch) and isinstance(listed.baskets[0].basket_items[0], BasketLine)


def test_every_form_of_a_line_has_the_same_fields() -> None:
    assert set(LINE_FIELDS) == set(BasketLine.__struct_fields__) == set(KeyedBasketLine.__struct_fields__)
    assert LINE_FIELDS[4:] == HIERARCHY_FIELDS
    assert BasketLine.of("P1", 2, 1.5, None, ("A", "B")) == BasketLine("P1", 2, 1.5, None, "A", "B")


def test_the_featurization_reads_each_form_alike(trained_model: Path) -> None:
    from retail_prediction.features.client import client_features
    from retail_prediction.serving.predictor import Predictor

    tables = Predictor.load(trained_model).tables
    product = str(tables.levels[0].vocab[0])
    fields = {"quantity": 2.0, "price": 1.25, "category": None, "prod_code_10": "X"}
    forms = [
        [BasketLine.of(product, 2.0, 1.25, None, ("X",))],
        [msgspec.convert({"product_id": product, **fields}, BasketLine)],
        {product: msgspec.convert(fields, KeyedBasketLine)},
    ]
    rows = [client_features([basket], tables)[0] for basket in forms]
    assert all(np.array_equal(rows[0], other) for other in rows[1:])
