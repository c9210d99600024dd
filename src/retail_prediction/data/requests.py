"""Baskets of a data file as /predict request bodies: what benchmarks send and tests replay as live traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..contract import HIERARCHY_FIELDS
from . import lgsr
from .baskets import Baskets, table_to_baskets
from .reading import read_transactions, resolve_files


def sample_baskets(data: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` random baskets of the last data file under `data` as /predict bodies (with hierarchy codes)."""
    return request_bodies(table_to_baskets(read_transactions(resolve_files(data)[-1])), n, seed)


def request_bodies(baskets: Baskets, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` of these baskets, chosen at random with `seed`, as /predict bodies."""
    lines = baskets.lines
    order = np.argsort(lines.basket, kind="stable")
    starts = np.searchsorted(lines.basket[order], np.arange(lines.n_baskets + 1))
    chosen = np.random.default_rng(seed).choice(lines.n_baskets, size=min(n, lines.n_baskets), replace=False)
    return [{"basket_items": [_line(baskets, int(i)) for i in order[starts[b]:starts[b + 1]]]} for b in chosen]


def _line(baskets: Baskets, i: int) -> dict[str, Any]:
    lines = baskets.lines
    quantity = float(lines.quantity[i])
    item = {"product_id": str(lines.product.values[lines.product.index[i]]), "quantity": quantity,
            "price": round(float(lines.spend[i]) / quantity, 4)}
    for name, codes in zip(lgsr.HIERARCHY, lines.hierarchy, strict=True):
        if codes is not None and codes.index[i] >= 0:
            item[name.lower()] = str(codes.values[codes.index[i]])
    return item


def long_form(bodies: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """/predict bodies (list form) as the inference protocol's long-form columns, one row per line: basket
    `b<i>` for the i-th body, hierarchy codes as "" where a line has none."""
    cols: dict[str, list[Any]] = {"basket_id": [], "product_id": [], "quantity": [], "price": [],
                                  **{f: [] for f in HIERARCHY_FIELDS}}
    for i, body in enumerate(bodies):
        for line in body["basket_items"]:
            cols["basket_id"].append(f"b{i}")
            for name in ("product_id", "quantity", "price"):
                cols[name].append(line[name])
            for f in HIERARCHY_FIELDS:
                cols[f].append(line.get(f, ""))
    return cols
