"""Arrow tables of transaction lines -> `Baskets`: the featurization's input (`contract.Lines`, grouped by
basket) plus each basket's ID, week and label. Codes stay dictionary indices; no line becomes a Python object."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..contract import Codes, Lines
from . import lgsr
from .errors import DataError


@dataclass(frozen=True)
class Baskets:
    """Transaction lines grouped into baskets, ready for the featurization."""

    lines: Lines
    ids: pa.Array  # Arrow strings, one per basket (written out as they are by `predict`)
    week: np.ndarray | None  # int, one per basket
    label: np.ndarray | None  # str, one per basket

    @cached_property
    def basket_ids(self) -> np.ndarray:
        """The IDs as a NumPy str array, made on first use (scoring writes `ids` and never needs it)."""
        return _str_array(self.ids)

    def select(self, keep: np.ndarray) -> Baskets:
        """The baskets where `keep` is true, renumbered 0..n-1 in the same order."""
        kept = np.flatnonzero(keep)
        lines = self._contiguous(kept)
        if lines is None:
            new_number = np.cumsum(keep, dtype=np.int32) - 1
            lines = self.lines.take(np.flatnonzero(keep[self.lines.basket]))
            lines = replace(lines, basket=new_number[lines.basket], n_baskets=int(kept.size))
        return Baskets(lines=lines, ids=self.ids.take(pa.array(kept)),
                       week=None if self.week is None else self.week[keep],
                       label=None if self.label is None else self.label[keep])

    def _contiguous(self, kept: np.ndarray) -> Lines | None:
        """Kept baskets that are one run of grouped lines (e.g. the weeks before a cut) as views, not copies."""
        if kept.size == 0 or kept[-1] - kept[0] + 1 != kept.size or not self.lines.grouped():
            return None
        return self.lines.basket_range(int(kept[0]), int(kept[-1]) + 1)


def table_to_baskets(table: pa.Table, *, with_label: bool = True) -> Baskets:
    """Arrow table of lines -> `Baskets` (the featurization's input plus per-basket ID, week, label)."""
    id_dictionary, id_index = _dictionary_column(table, lgsr.BASKET_ID)
    # Number the baskets by a count per ID (linear, no sort of the lines), in dictionary order.
    used = np.flatnonzero(np.bincount(id_index, minlength=len(id_dictionary)))
    ids = id_dictionary if used.size == len(id_dictionary) else id_dictionary.take(pa.array(used))
    number = np.full(len(id_dictionary), -1, dtype=np.int32)
    number[used] = np.arange(used.size, dtype=np.int32)
    basket = number[id_index]
    del id_index
    n_baskets = int(used.size)
    grouped = not (np.diff(basket) < 0).any()  # a file's lines usually come basket by basket: no sort then
    order = None if grouped else np.argsort(basket, kind="stable")
    first = np.flatnonzero(np.diff(basket if order is None else basket[order], prepend=-1))
    first = first if order is None else order[first]
    product = Codes(*string_column_codes(table, lgsr.PROD_CODE))
    hierarchy = tuple(
        Codes(*string_column_codes(table, name)) if name in table.column_names else None
        for name in lgsr.HIERARCHY
    )
    lines = Lines(
        basket=basket, n_baskets=n_baskets, product=product,
        quantity=_numeric(table, lgsr.QUANTITY), spend=_numeric(table, lgsr.SPEND), hierarchy=hierarchy,
    )
    if order is not None:
        # Grouped by basket, the featurization sums baskets as contiguous runs (no gather, no sort).
        lines = lines.take(order)
    del order
    week = _numeric(table, lgsr.SHOP_WEEK)[first].astype(np.int64) if lgsr.SHOP_WEEK in table.column_names else None
    label = None
    if with_label and lgsr.LABEL in table.column_names:
        values, index = string_column_codes(table, lgsr.LABEL)
        _check_one_label_per_basket(index, basket, first, ids)
        label = values[index[first]]
    return Baskets(lines=lines, ids=ids, week=week, label=label)


def string_column_codes(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A dictionary-encoded column as (unique values as a NumPy str array, int32 index per row)."""
    dictionary, index = _dictionary_column(table, name)
    return _str_array(dictionary), index


def filter_weeks(table: pa.Table, first: int | None, last: int | None) -> pa.Table:
    """Keep the lines of weeks first..last (either bound optional)."""
    if first is not None:
        table = table.filter(pc.greater_equal(table[lgsr.SHOP_WEEK], first))
    if last is not None:
        table = table.filter(pc.less_equal(table[lgsr.SHOP_WEEK], last))
    return table


def _dictionary_column(table: pa.Table, name: str) -> tuple[pa.Array, np.ndarray]:
    """(dictionary, int32 index per row, -1 = missing); the index is a view of Arrow's buffer where it can be."""
    col = _single_chunk(table.column(name))
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    indices = col.indices.fill_null(-1) if col.indices.null_count else col.indices
    return col.dictionary, indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)


def _single_chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def _str_array(values: pa.Array) -> np.ndarray:
    """Arrow strings -> NumPy str array, a block at a time: millions of basket IDs as Python objects at once
    would cost several times the array itself."""
    width = pc.max(pc.utf8_length(values)).as_py() if len(values) else 0
    out = np.empty(len(values), dtype=f"<U{max(width or 0, 1)}")
    step = 1 << 20
    for start in range(0, len(values), step):
        out[start: start + step] = values.slice(start, step).to_numpy(zero_copy_only=False)
    return out


def _numeric(table: pa.Table, name: str) -> np.ndarray:
    return _single_chunk(table.column(name)).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _check_one_label_per_basket(index: np.ndarray, basket: np.ndarray, first: np.ndarray, ids: pa.Array) -> None:
    clash = np.flatnonzero(index != index[first][basket])
    if clash.size:
        bad = ids[int(basket[clash[0]])].as_py()
        raise DataError("input", f"basket {bad} has lines with different labels: a basket has one label",
                        column=lgsr.LABEL)
