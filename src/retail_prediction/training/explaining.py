"""`retail-prediction predict --explain`: per basket, why it got its label, as JSON lines beside the CSV."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
import orjson

from ..contract import Lines
from ..features.explain import explain_encoded
from ..features.tables import encode
from ..serving.predictor import Predictor

BLOCK = 1 << 14  # baskets explained (and held as dicts) at a time


def explanations_path(out: Path) -> Path:
    """Where the explanations of `out` (predictions.csv) go: predictions.explanations.jsonl."""
    return out.with_name(f"{out.stem}.explanations.jsonl")


def explanation_rows(predictor: Predictor, lines: Lines, basket_ids: Sequence[str], proba: np.ndarray) -> list[bytes]:
    """One chunk of baskets (their lines grouped by basket, numbered from 0; their IDs; their probabilities) ->
    one JSON line per basket: basket_id, label and the explanation the API gives (docs/api.md)."""
    best = proba.argmax(axis=1)
    products = lines.product.values[lines.product.index].tolist()
    why = explain_encoded(encode(lines, predictor.tables), lines.spend, lines.quantity, lines.basket, best, products,
                          predictor.tables)
    classes = predictor.classes
    return [orjson.dumps({"basket_id": str(basket_id), "label": classes[b], "explanation": w}) + b"\n"
            for basket_id, b, w in zip(basket_ids, best.tolist(), why, strict=True)]


def write_explanations(out: IO[bytes], predictor: Predictor, lines: Lines, basket_ids: Sequence[str],
                       proba: np.ndarray) -> None:
    """`explanation_rows` of every basket appended to `out`, a block of baskets at a time (bounded memory)."""
    for start in range(0, lines.n_baskets, BLOCK):
        stop = min(start + BLOCK, lines.n_baskets)
        out.writelines(explanation_rows(predictor, lines.basket_range(start, stop), basket_ids[start:stop],
                                        proba[start:stop]))
