"""Why a basket got its class: each line's share of the evidence the featurization feeds the model.

Each line already has a class distribution p_i (the smoothing chain of `tables.line_distributions`: prior,
price band, hierarchy levels, product) and the basket's features start from their mean (`p_mean_<class>`).
For the predicted class c of a basket of n lines, line i's contribution is

    a_i = (p_ic - prior_c) / n,     so that   sum_i a_i = p_mean_c - prior_c,

its part of how far the basket's mean evidence for c stands above (or below) the class prior: positive
lines drive the prediction, negative lines pull against it. This explains the evidence, not the trees (the
model also reads the latent classes, spend, size...): docs/api.md says what it does and does not tell.
Computed only when asked, from one extra pass of the compiled per-line loop (no ONNX run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .tables import Encoded, FeatureTables, encoded_distributions

TOP_DRIVERS = 3  # lines listed for and against the predicted class
PRICE_BAND = "price_band"


def line_sources(enc: Encoded) -> np.ndarray:
    """Per line, the finest level whose code the tables know (0 = the product, j = hierarchy level j of
    `tables.levels`), -1 when none does and the line's class comes from its unit-price band."""
    known = enc.level_rows >= 0
    return np.where(known.any(axis=0), known.argmax(axis=0), -1)


def source_names(tables: FeatureTables) -> list[str]:
    """What `line_sources` values mean, indexed by value (-1 is the last entry)."""
    return ["product", *(f"hierarchy:{lv.name}" for lv in tables.levels[1:]), PRICE_BAND]


def explain_lines(enc: Encoded, spend: np.ndarray, quantity: np.ndarray, basket: np.ndarray,
                  predicted: np.ndarray, products: Sequence[str], tables: FeatureTables,
                  top: int = TOP_DRIVERS) -> list[dict[str, Any]]:
    """One explanation per basket (lines grouped by basket, in their order; `predicted`: class index per
    basket): the attributed class, its prior and mean evidence, every line, the top drivers each way."""
    p, _ = encoded_distributions(enc, spend, quantity, tables)
    basket = np.asarray(basket, dtype=np.int64)
    n_baskets = len(predicted)
    sizes = np.bincount(basket, minlength=n_baskets)
    cls = np.asarray(predicted, dtype=np.int64)[basket]
    prior = tables.prior_share
    contribution = (p[np.arange(p.shape[0]), cls] - prior[cls]) / np.maximum(sizes, 1)[basket]
    points = p.argmax(axis=1)
    names, classes = source_names(tables), tables.classes
    rows = zip(products, points.tolist(), p.max(axis=1).tolist(), line_sources(enc).tolist(),
               contribution.tolist(), strict=True)
    lines = [{"product_id": product, "points_to": classes[k], "probability": prob, "source": names[s],
              "known": s == 0, "contribution": a} for product, k, prob, s, a in rows]
    out, start = [], 0
    for size, c in zip(sizes.tolist(), np.asarray(predicted).tolist(), strict=True):
        out.append(_basket(lines[start:start + size], classes[c], float(prior[c]), top))
        start += size
    return out


def _basket(lines: list[dict[str, Any]], cls: str, prior: float, top: int) -> dict[str, Any]:
    total = sum(line["contribution"] for line in lines)
    order = sorted(range(len(lines)), key=lambda i: lines[i]["contribution"])
    against = [i for i in order[:top] if lines[i]["contribution"] < 0]
    drivers = [i for i in reversed(order[-top:]) if lines[i]["contribution"] > 0]
    return {
        "class": cls, "prior": prior, "evidence": prior + total, "lines": lines,
        "drivers_for": [_driver(i, lines[i]) for i in drivers],
        "drivers_against": [_driver(i, lines[i]) for i in against],
    }


def _driver(i: int, line: dict[str, Any]) -> dict[str, Any]:
    return {"line": i, "product_id": line["product_id"], "points_to": line["points_to"],
            "contribution": line["contribution"]}

