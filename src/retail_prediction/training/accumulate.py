"""Streamed training's passes over the spilled chunks: the tables' class counts (per fold), the latent
classes' estimations, and the features of bounded, seeded samples of baskets. Each pass holds one chunk's
lines (a few per thread) and the per-code state; per-basket arrays exist per chunk only.

Which baskets a pass sees is fixed by their keys (hashes of their ids), never by their position: folds and
samples are the same however the files are listed or chunked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np

from ..contract import LABELS, Codes, Lines
from ..data import lgsr
from ..features import kernel
from ..features.fitting import FoldCounts, learn_latent
from ..features.latent import LatentTables, as_f64
from ..features.latent_fit import EMChunk, mix
from ..features.tables import BasketSums, Encoded, FeatureTables, LevelTable, encoded_features
from .stream import Spilled, ordered_map

_FOLD_SALT, _SAMPLE_SALT = 0x5EED, 0x5A3E  # fold, sample and validation priorities: independent hashes


@dataclass(frozen=True)
class Part:
    """Some weeks' baskets of the spilled lines, their codes as rows of one vocabulary per level."""

    spilled: Spilled
    vocabs: list[np.ndarray]  # sorted codes per level (product first)
    row: list[np.ndarray]  # per level: global id -> row, -1 where not in the vocabulary
    ids: list[np.ndarray]  # per level: row -> global id
    weeks: tuple[int | None, int | None]  # first and last week of the baskets (inclusive; None: open)
    class_of: np.ndarray  # index in contract.LABELS -> class index
    n_folds: int
    seed: int
    threads: int

    def with_weeks(self, first: int | None, last: int | None) -> Part:
        return replace(self, weeks=(first, last))

    def map(self, fn: Callable[[int], object]) -> Iterator[object]:
        return ordered_map(fn, range(self.spilled.spill.n_chunks), self.threads)

    def selected(self, i: int) -> np.ndarray:
        week = np.asarray(self.spilled.spill.array(i, "week"))
        first, last = self.weeks
        keep = np.ones(week.size, dtype=bool)
        if first is not None:
            keep &= week >= first
        if last is not None:
            keep &= week <= last
        return keep

    def fold(self, key: np.ndarray) -> np.ndarray:
        return (mix(key, self.seed ^ _FOLD_SALT) % np.uint64(max(self.n_folds, 1))).astype(np.int16)


def part(spilled: Spilled, vocab_week: int | None, classes: Sequence[str], n_folds: int, seed: int,
         threads: int) -> Part:
    """The baskets up to `vocab_week` (None: all) with the codes seen by then as vocabulary."""
    views = [v.sorted_view(vocab_week) for v in spilled.vocabs]
    class_of = np.full(len(LABELS), -1, dtype=np.int64)
    class_of[[LABELS.index(c) for c in classes]] = np.arange(len(classes))
    return Part(spilled, [v[0] for v in views], [v[1] for v in views], [v[2] for v in views], (None, vocab_week),
                class_of, n_folds, seed, threads)


@dataclass(frozen=True)
class Loaded:
    """One chunk's selected baskets, codes as the part's rows, baskets renumbered 0..n-1."""

    rows: np.ndarray
    basket: np.ndarray
    spend: np.ndarray
    quantity: np.ndarray
    label: np.ndarray
    key: np.ndarray

    @property
    def n_baskets(self) -> int:
        return int(self.label.shape[0])


def load(p: Part, i: int, keep: np.ndarray) -> Loaded:
    """Chunk i's baskets where `keep` is true."""
    chunk = p.spilled.spill.read(i)
    lines = keep[chunk.basket]
    number = np.cumsum(keep, dtype=np.int32) - 1
    rows = np.stack([np.where(r >= 0, m[np.maximum(r, 0)], -1) for r, m in zip(chunk.rows[:, lines], p.row,
                                                                               strict=True)]).astype(np.int32)
    return Loaded(rows, number[chunk.basket[lines]], chunk.spend[lines], chunk.quantity[lines],
                  p.class_of[chunk.label[keep]], chunk.key[keep])


@dataclass(frozen=True)
class Learned:
    tables: FeatureTables
    folds: FoldCounts | None
    fold_tables: list[FeatureTables]  # tables without fold f's baskets, f = 0..n_folds-1


def learn(p: Part, classes: Sequence[str], evidence_power: float, prior_strength: float,
          price_bands: int = 32, latent_groups: int = 5) -> Learned:
    """`fitting.fit_tables` over the part's chunks: the same counts (summed per chunk), the latent classes
    estimated over the chunks too."""
    k, n_folds = len(classes), max(p.n_folds, 1)
    edges = as_f64(np.unique(p.spilled.prices.quantiles(np.linspace(0, 1, price_bands + 1)[1:-1], p.weeks[1])))
    sizes = [v.size for v in p.vocabs]

    def counts(i: int) -> list[np.ndarray]:
        c = load(p, i, p.selected(i))
        fold = p.fold(c.key)
        per_basket = np.bincount(c.basket, minlength=c.n_baskets)
        weight = (1.0 / np.maximum(per_basket, 1) ** evidence_power)[c.basket]
        cls, line_fold = c.label[c.basket], fold[c.basket].astype(np.int64)
        log_price, band = np.empty(c.basket.size), np.empty(c.basket.size, dtype=np.int32)
        kernel.log_prices(as_f64(c.spend), as_f64(c.quantity), log_price)
        kernel.price_bands(log_price, edges, band)
        out = [_by_fold(line_fold, rows, size, cls, weight, k, n_folds) for rows, size in zip(c.rows, sizes,
                                                                                             strict=True)]
        out.append(_by_fold(line_fold, band, edges.size + 1, cls, weight, k, n_folds))
        out.append(np.bincount(fold.astype(np.int64) * k + c.label, minlength=n_folds * k).reshape(n_folds, k))
        known = c.rows[0] >= 0
        out.append(np.bincount(line_fold[known] * sizes[0] + c.rows[0][known],
                               minlength=n_folds * sizes[0]).reshape(n_folds, sizes[0]))
        return out

    total: list[np.ndarray] | None = None
    for part_counts in p.map(counts):
        total = part_counts if total is None else [a + b for a, b in zip(total, part_counts, strict=True)]
    assert total is not None
    *per_level, by_band, prior, product_lines = total
    names = ["product", *lgsr.HIERARCHY]
    tables = FeatureTables(
        classes=tuple(classes),
        levels=tuple(LevelTable(name, v, c.sum(axis=0)) for name, v, c in zip(names, p.vocabs, per_level,
                                                                               strict=True)),
        price_edges=edges, price_counts=by_band.sum(axis=0), prior=prior.sum(axis=0).astype(float),
        evidence_power=evidence_power, prior_strength=prior_strength, hierarchy_names=tuple(lgsr.HIERARCHY),
    )
    tables = replace(tables, latent=_latent(p, tables, product_lines.sum(axis=0), None))
    if p.n_folds <= 1:
        return Learned(tables, None, [tables])
    folds = FoldCounts(n_folds=n_folds, line_fold=np.zeros(0, np.int16), level_counts=tuple(per_level),
                       price_counts=by_band, prior=prior.astype(float))
    groups = min(latent_groups, n_folds)
    fold_group = np.arange(n_folds) % groups
    fold_latent = tuple(_latent(p, folds.tables_of(fold_group != g, tables),
                                product_lines[fold_group != g].sum(axis=0), fold_group != g)
                        for g in range(groups))
    folds = replace(folds, latent=fold_latent)
    return Learned(tables, folds, [folds.tables_without(f, tables) for f in range(n_folds)])


def _by_fold(fold: np.ndarray, rows: np.ndarray, n_rows: int, cls: np.ndarray, weight: np.ndarray, k: int,
             n_folds: int) -> np.ndarray:
    """(n_folds, n_rows, k) evidence-weighted class counts of the lines with a known row."""
    known = rows >= 0
    flat = (fold[known] * n_rows + rows[known]) * k + cls[known]
    return np.bincount(flat, weights=weight[known], minlength=n_folds * n_rows * k).reshape(n_folds, n_rows, k)


def _latent(p: Part, tables: FeatureTables, n_lines: np.ndarray, used_folds: np.ndarray | None) -> LatentTables:
    """The latent classes from the labels of the part's baskets in `used_folds` (None: all)."""
    stand_in, enc = _stand_ins(p)

    def em_chunk(i: int) -> EMChunk:
        spill = p.spilled.spill
        keep = p.selected(i)
        basket = np.asarray(spill.array(i, "basket"))
        key = np.asarray(spill.array(i, "key"))
        if used_folds is not None:
            keep &= used_folds[p.fold(key)]
        product = p.row[0][np.asarray(spill.array(i, "rows")[0])]
        lines = keep[basket] & (product >= 0)
        label = p.class_of[np.asarray(spill.array(i, "label"))]
        return EMChunk(product[lines], basket[lines], label, key)

    def chunks() -> list[Callable[[], EMChunk]]:
        return [partial(em_chunk, i) for i in range(p.spilled.spill.n_chunks)]

    def pool(fn: Callable[[Any], object], items: Iterable[Any]) -> Iterator[object]:
        return ordered_map(fn, items, p.threads)

    return learn_latent(stand_in, enc, tables, chunks, n_lines, p.seed, pool)


def _stand_ins(p: Part) -> tuple[Lines, Encoded]:
    """One line per product of the part (its first), as lines and as rows of the part's vocabulary."""
    spend, quantity, hierarchy = p.spilled.stand_ins.arrays()
    ids = p.ids[0]
    rows = [np.arange(ids.size, dtype=np.int32)]
    for level, h in enumerate(hierarchy, 1):
        g = h[ids]
        rows.append(np.where(g >= 0, p.row[level][np.maximum(g, 0)], -1).astype(np.int32))
    n = ids.size
    lines = Lines(basket=np.zeros(n, dtype=np.int32), n_baskets=1,
                  product=Codes(np.array([], dtype=str), np.full(n, -1, dtype=np.int32)),
                  quantity=quantity[ids], spend=spend[ids])
    return lines, Encoded(np.ascontiguousarray(np.stack(rows)))


def sample_threshold(p: Part, k: int, salt: int) -> np.uint64 | None:
    """The k-th lowest seeded priority of the part's baskets (None: k or fewer baskets, keep all)."""
    def priorities(i: int) -> np.ndarray:
        key = np.asarray(p.spilled.spill.array(i, "key"))[p.selected(i)]
        pr = mix(key, p.seed ^ salt)
        return np.partition(pr, k - 1)[:k] if pr.size > k else pr

    best = np.zeros(0, dtype=np.uint64)
    for pr in p.map(priorities):
        best = np.concatenate([best, pr])  # type: ignore[list-item]
        if best.size > k:
            best = np.partition(best, k - 1)[:k]
    return None if best.size < k else np.uint64(best.max())


def features(p: Part, learned: Learned, limit: int, *, out_of_fold: bool,
             salt: int = _SAMPLE_SALT) -> tuple[np.ndarray, np.ndarray, int]:
    """Feature rows and class indexes of at most `limit` of the part's baskets (those of lowest seeded
    priority, in that order), and how many baskets the part has. `out_of_fold`: training rows, each basket
    described by the tables without its fold (no label leaks in); else by the tables themselves."""
    threshold = sample_threshold(p, limit, salt)

    def rows(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        selected = p.selected(i)
        keep = selected.copy()
        key = np.asarray(p.spilled.spill.array(i, "key"))
        priority = mix(key, p.seed ^ salt)
        if threshold is not None:
            keep &= priority <= threshold
        c = load(p, i, keep)
        enc = Encoded(c.rows)
        if not out_of_fold:
            x = encoded_features(enc, c.spend, c.quantity, c.basket, c.n_baskets, learned.tables)
        else:
            x = _out_of_fold(c, enc, p.fold(c.key), learned)
        return x, c.label, priority[keep], int(selected.sum())

    parts = list(p.map(rows))
    x = np.concatenate([r[0] for r in parts])  # type: ignore[index]
    y = np.concatenate([r[1] for r in parts])  # type: ignore[index]
    order = np.argsort(np.concatenate([r[2] for r in parts]), kind="stable")  # type: ignore[index]
    return x[order], y[order], sum(r[3] for r in parts)  # type: ignore[index,misc]


def _out_of_fold(c: Loaded, enc: Encoded, fold: np.ndarray, learned: Learned) -> np.ndarray:
    assert learned.folds is not None
    sums = BasketSums(c.n_baskets, learned.tables.n_classes)
    line_fold = fold[c.basket]
    for f, tables in enumerate(learned.fold_tables):
        sub = np.flatnonzero(line_fold == f)
        rows = Encoded(np.ascontiguousarray(enc.level_rows[:, sub]))
        sums.add(rows, c.spend[sub], c.quantity[sub], c.basket[sub], tables)
    latent = learned.folds.latent
    return sums.finish(latent, fold % len(latent))
