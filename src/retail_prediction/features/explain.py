"""Why a basket got its class: each line's share of the evidence the featurization feeds the model.

Each line already has a class distribution p_i (the smoothing chain of `tables.line_distributions`: prior,
price band, hierarchy levels, product) and the basket's features start from their mean (`p_mean_<class>`).
For the predicted class c of a basket of n lines, line i's contribution is

    a_i = (p_ic - prior_c) / n,     so that   sum_i a_i = p_mean_c - prior_c,

its part of how far the basket's mean evidence for c stands above (or below) the class prior: positive
lines drive the prediction, negative lines pull against it. This explains the evidence, not the trees (the
model also reads the latent classes, spend, size...): docs/api.md says what it does and does not tell.
Computed only when asked, in one compiled call over the lines (`explain_kernel.client_explain`,
`explain_kernel.explain_lines`: the answer's dicts too, which in Python cost as much as the scoring), no ONNX run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..contract import hierarchy_fields
from . import explain_kernel
from .latent import as_f64
from .tables import Encoded, FeatureTables

TOP_DRIVERS = 3  # lines listed for and against the predicted class


def explain_clients(baskets: Sequence[Mapping[str, Any] | Sequence[Any]], predicted: Sequence[int],
                    tables: FeatureTables, top: int = TOP_DRIVERS) -> list[dict[str, Any]]:
    """One explanation per client basket (as `client.client_features` takes them) of class `predicted[b]`."""
    baskets = baskets if isinstance(baskets, list) else list(baskets)
    products = [code for items in baskets for code in
                (items if type(items) is dict else [line.product_id for line in items])]
    return explain_kernel.client_explain(baskets, hierarchy_fields(tables.hierarchy_names), tables.row_tables,
                                         tables.kernel, [int(c) for c in predicted], products, tables.classes,
                                         tables.source_names, top)


def explain_encoded(enc: Encoded, spend: np.ndarray, quantity: np.ndarray, basket: np.ndarray,
                    predicted: np.ndarray, products: Sequence[str], tables: FeatureTables,
                    top: int = TOP_DRIVERS) -> list[dict[str, Any]]:
    """The same for lines already looked up in the tables (files: `encode`), grouped by basket in order."""
    return explain_kernel.explain_lines(enc.level_rows, as_f64(spend), as_f64(quantity),
                                        np.ascontiguousarray(basket, dtype=np.int32),
                                        np.ascontiguousarray(predicted, dtype=np.int32), tables.kernel, list(products),
                                        tables.classes, tables.source_names, top)
