"""Client baskets (the API's decoded lines, or `contract.BasketLine`s) -> feature rows, through the same
compiled loops as training: codes are looked up straight from the client's strings in one pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ..contract import hierarchy_fields
from . import kernel
from .tables import Encoded, FeatureTables


class ClientLines(NamedTuple):
    """Client baskets as the compiled loops take them: each line's basket, quantity and spend, its row at
    every level of the tables (`enc`) and whether it names any code or category (`named`)."""

    basket: np.ndarray
    n_baskets: int
    quantity: np.ndarray
    spend: np.ndarray
    enc: Encoded
    named: np.ndarray


def encode_clients(baskets: Sequence[Mapping[str, Any] | Sequence[Any]], tables: FeatureTables) -> ClientLines:
    """Client baskets (each a dict product code -> line, or a list of lines with a `product_id`; lines as
    `contract.BasketLine` or the API's request lines) -> the line table, codes looked up straight from the client's
    strings in one compiled pass (`kernel.client_lines`). For inspection and tests: serving goes
    from the baskets to the features in one call (`client_features`), through the same loops."""
    n = sum(map(len, baskets))
    levels = len(tables.levels)
    out = ClientLines(np.empty(n, dtype=np.int32), len(baskets), np.empty(n), np.empty(n),
                      Encoded(np.empty((levels, n), dtype=np.int32)), np.empty(n, dtype=np.uint8))
    kernel.client_lines(_as_list(baskets), hierarchy_fields(tables.hierarchy_names), tables.row_tables,
                                  out.basket, out.quantity, out.spend, out.enc.level_rows, out.named)
    return out


def client_features(baskets: Sequence[Mapping[str, Any] | Sequence[Any]],
                    tables: FeatureTables) -> tuple[np.ndarray, np.ndarray]:
    """Client baskets -> their feature rows (float32, columns as `tables.feature_names()`) and, per basket,
    lines of an unknown product and lines naming only unknown codes: `encode_clients` + `encoded_features`
    + the unknown counts, in one compiled call (`kernel.client_features`)."""
    n = len(baskets)
    features = np.empty((n, tables.n_features), dtype=np.float32)
    unknown = np.empty((n, 2), dtype=np.int64)
    coef, intercept = tables.composition
    kernel.client_features(_as_list(baskets), hierarchy_fields(tables.hierarchy_names), tables.row_tables,
                                     tables.kernel, coef, intercept, features, unknown)
    return features, unknown


def _as_list(baskets: Sequence[Any]) -> list[Any]:
    return baskets if isinstance(baskets, list) else list(baskets)
