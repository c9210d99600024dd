"""Streamed training's first pass: each transaction file read, grouped into baskets and spilled as compact
chunks, one per shop week (`spill.py`), while the state that does not grow with the lines is gathered: code
vocabularies, price counts per week, one stand-in line per product, the weeks and labels seen.

Files are read and grouped a few at a time ahead of the one being recorded (Arrow's reading and most of
NumPy's grouping release the GIL), so reading overlaps the rest on every CPU the run may use.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..contract import LABELS
from ..data import lgsr
from ..data.baskets import Baskets, filter_weeks, table_to_baskets
from ..data.reading import DataError, Progress, read_transactions
from ..data.week_span import outside_weeks
from ..features import kernel
from .spill import Chunk, KeyLedger, PriceCounts, Spill, Vocab, basket_keys

TRAIN_COLUMNS = (lgsr.SHOP_WEEK, lgsr.QUANTITY, lgsr.SPEND, lgsr.PROD_CODE, *lgsr.HIERARCHY,
                 lgsr.BASKET_ID, lgsr.LABEL)
T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """`map(fn, items)` on `threads` threads, in order, at most 2 x threads items in flight (bounded memory)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class StandIns:
    """Per product (global id), the line standing for it: the first of the basket with the lowest key that
    holds it (the same line however the files are listed or chunked): spend, quantity, hierarchy codes."""

    key: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    spend: np.ndarray = field(default_factory=lambda: np.zeros(0))
    quantity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hierarchy: np.ndarray = field(default_factory=lambda: np.zeros((len(lgsr.HIERARCHY), 0), dtype=np.int32))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.spend, self.quantity, self.hierarchy

    def update(self, rows: np.ndarray, basket_key: np.ndarray, spend: np.ndarray, quantity: np.ndarray,
               n_products: int) -> None:
        grow = n_products - self.key.size
        self.key = np.concatenate([self.key, np.full(grow, np.iinfo(np.uint64).max, dtype=np.uint64)])
        self.spend, self.quantity = np.concatenate([self.spend, np.zeros(grow)]), np.concatenate([self.quantity,
                                                                                                  np.zeros(grow)])
        self.hierarchy = np.concatenate([self.hierarchy, np.full((rows.shape[0] - 1, grow), -1, np.int32)], axis=1)
        known = np.flatnonzero(rows[0] >= 0)
        product, key = rows[0][known], basket_key[known]
        lowest = np.full(n_products, np.iinfo(np.uint64).max, dtype=np.uint64)
        np.minimum.at(lowest, product, key)  # per product, the lowest key of a basket holding it
        hit = np.flatnonzero(key == lowest[product])  # the lines of those baskets: few
        ids, first = np.unique(product[hit], return_index=True)  # and the first such line per product
        line = known[hit[first]]
        better = lowest[ids] < self.key[ids]
        ids, line = ids[better], line[better]
        self.key[ids], self.spend[ids], self.quantity[ids] = lowest[ids], spend[line], quantity[line]
        self.hierarchy[:, ids] = rows[1:, line]


@dataclass
class Spilled:
    """What the first pass learned; the lines themselves are in `spill`."""

    spill: Spill
    files: list[str]
    vocabs: list[Vocab]  # product, then each hierarchy level
    prices: PriceCounts = field(default_factory=PriceCounts)
    stand_ins: StandIns = field(default_factory=StandIns)
    weeks: set[int] = field(default_factory=set)
    labels: set[int] = field(default_factory=set)
    unit_price_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))
    product_lines: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_lines: int = 0
    n_baskets: int = 0
    ledger: KeyLedger = field(init=False)  # every basket key and its file, in the spill folder

    def __post_init__(self) -> None:
        self.ledger = KeyLedger(self.spill.directory)


@dataclass(frozen=True)
class _Read:
    path: Path
    baskets: Baskets | None
    keys: np.ndarray
    log_price: np.ndarray


def _read(path: Path, until_week: int | None) -> _Read:
    if outside_weeks(path, None, until_week):  # a Parquet file all of whose weeks are later: not read
        return _Read(path, None, np.zeros(0, np.uint64), np.zeros(0))
    table = filter_weeks(read_transactions([path], columns=TRAIN_COLUMNS), None, until_week)
    if not table.num_rows:
        return _Read(path, None, np.zeros(0, np.uint64), np.zeros(0))
    try:
        baskets = table_to_baskets(table)
    except DataError as exc:  # grouping's errors name no file: name this one
        raise DataError(path, str(exc).split(": ", 1)[-1], column=exc.column) from None
    del table
    lines = baskets.lines
    log_price = np.empty(lines.n_lines)
    kernel.log_prices(np.ascontiguousarray(lines.spend), np.ascontiguousarray(lines.quantity), log_price)
    return _Read(path, baskets, basket_keys(baskets.basket_ids), log_price)


def spill_files(files: list[Path], spill: Spill, until_week: int | None, threads: int,
                say: Progress) -> Spilled:
    """Read every file once, in order, into `spill`; refuse a basket whose lines are in two files."""
    out = Spilled(spill, [], [Vocab() for _ in range(1 + len(lgsr.HIERARCHY))])
    started, last = time.monotonic(), 0.0
    for n, read in enumerate(ordered_map(lambda p: _read(p, until_week), files, threads), 1):
        out.files.append(str(read.path))
        if read.baskets is not None:
            _record(out, read)
        if time.monotonic() - last > 5 or n == len(files):
            last = time.monotonic()
            say(f"read {n}/{len(files)} files, {out.n_lines:,} lines, {out.n_baskets:,} baskets "
                f"in {last - started:.1f}s")
    if not out.n_lines:
        raise DataError(", ".join(out.files), "the files hold no transaction lines")
    _check_one_file_each(out)
    return out


def _record(out: Spilled, read: _Read) -> None:
    baskets, lines = read.baskets, read.baskets.lines  # type: ignore[union-attr]
    assert baskets is not None and baskets.week is not None and baskets.label is not None
    out.ledger.add(read.keys, len(out.files) - 1)
    line_week = baskets.week[lines.basket]
    rows = np.stack([vocab.ids(codes, line_week) for vocab, codes in
                     zip(out.vocabs, [lines.product, *_hierarchy(baskets)], strict=True)])
    out.stand_ins.update(rows, read.keys[lines.basket], lines.spend, lines.quantity, len(out.vocabs[0].id_of))
    _product_sums(out, rows, lines.spend, lines.quantity)
    label = np.searchsorted(np.asarray(LABELS), baskets.label).astype(np.int8)
    for week in np.unique(baskets.week).tolist():
        # A chunk per week, whatever the files hold: the same lines in the same order give the same sums to
        # the last bit (the latent classes' estimation amplifies the last bits of its inputs).
        keep = baskets.week == week
        on = keep[lines.basket]
        number = np.cumsum(keep, dtype=np.int32) - 1
        out.prices.add(int(week), read.log_price[on])
        out.spill.write(Chunk(rows=rows[:, on], basket=number[lines.basket[on]], spend=lines.spend[on],
                              quantity=lines.quantity[on], label=label[keep],
                              week=baskets.week[keep].astype(np.int32), key=read.keys[keep]))
    out.weeks.update(np.unique(baskets.week).tolist())
    out.labels.update(np.unique(label).tolist())
    out.n_lines += lines.n_lines
    out.n_baskets += lines.n_baskets


def _hierarchy(baskets: Baskets) -> list[Any]:
    h = list(baskets.lines.hierarchy)
    return h + [None] * (len(lgsr.HIERARCHY) - len(h))


def _product_sums(out: Spilled, rows: np.ndarray, spend: np.ndarray, quantity: np.ndarray) -> None:
    """Per product, the sum of its lines' unit prices and their number (for the example products)."""
    n_products = len(out.vocabs[0].id_of)
    product = rows[0]
    known = product >= 0
    grow = n_products - out.unit_price_sum.size
    out.unit_price_sum = np.concatenate([out.unit_price_sum, np.zeros(grow)])
    out.product_lines = np.concatenate([out.product_lines, np.zeros(grow)])
    out.unit_price_sum += np.bincount(product[known], weights=(spend / quantity)[known], minlength=n_products)
    out.product_lines += np.bincount(product[known], minlength=n_products)


def _check_one_file_each(out: Spilled) -> None:
    """A basket's lines must all be in one file (chunks hold whole baskets): refuse a basket id found in two.
    Keys (64-bit hashes of the ids) found in two files are checked against the ids themselves."""
    for key, earlier, later in out.ledger.repeated():
        ids = [_ids_with_key(out.files[f], key) for f in (earlier, later)]
        shared = sorted(ids[0] & ids[1])
        if shared:
            raise DataError(out.files[later], f"basket {shared[0]} also has lines in {out.files[earlier]}: a "
                                              "basket's lines must all be in one file", column=lgsr.BASKET_ID)


def _ids_with_key(path: str, key: int) -> set[str]:
    ids = table_to_baskets(read_transactions([path], columns=TRAIN_COLUMNS)).basket_ids
    return set(ids[basket_keys(ids) == np.uint64(key)].tolist())
