"""Learning the featurization's tables from labelled training lines (training side; serving reads the
result through `tables.FeatureTables`): evidence-weighted class counts per code and price band, per-fold
counts for leak-free training features, and the products' latent classes (`latent_fit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..contract import Codes, Lines
from . import kernel, latent, latent_fit
from .latent import LatentTables, as_f64
from .tables import BasketSums, Encoded, FeatureTables, LevelTable, encode, line_distributions, lookup

_LINE_CHUNK = 1 << 20  # lines per chunk of the counting: bounds the memory of its (row, class) keys


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + _LINE_CHUNK, n)) for i in range(0, n, _LINE_CHUNK)] or [slice(0, 0)]


def _class_counts(rows: np.ndarray, n_rows: int, cls: np.ndarray, weight: np.ndarray, n_classes: int) -> np.ndarray:
    # By chunks of lines: the int64 (row, class) keys of all lines at once would be 16 bytes a line more.
    flat = np.zeros(n_rows * n_classes)
    for sl in _chunks(rows.shape[0]):
        flat += np.bincount(rows[sl].astype(np.int64) * n_classes + cls[sl], weights=weight[sl], minlength=flat.size)
    return flat.reshape(n_rows, n_classes)


@dataclass(frozen=True)
class FoldCounts:
    """Per-fold counts, so that tables 'without fold f' are the totals minus fold f's share."""

    n_folds: int
    line_fold: np.ndarray
    level_counts: tuple[np.ndarray, ...]  # each (n_folds, n_vocab, n_classes)
    price_counts: np.ndarray  # (n_folds, n_bands, n_classes)
    prior: np.ndarray  # (n_folds, n_classes)
    latent: tuple[LatentTables, ...] = ()  # per fold: learned from the other folds' baskets only

    def tables_without(self, f: int, tables: FeatureTables) -> FeatureTables:
        without = tables.with_counts(
            [lv.counts - c[f] for lv, c in zip(tables.levels, self.level_counts, strict=True)],
            tables.price_counts - self.price_counts[f],
            tables.prior - self.prior[f],
        )
        return replace(without, latent=self.latent[f % len(self.latent)]) if self.latent else without

    def tables_of(self, keep: np.ndarray, tables: FeatureTables) -> FeatureTables:
        """Tables of the folds where `keep` is true, summed from them alone: bit for bit independent of
        the other folds' labels (a total minus a share is not, and the estimation amplifies rounding)."""
        return tables.with_counts([c[keep].sum(axis=0) for c in self.level_counts],
                                  self.price_counts[keep].sum(axis=0), self.prior[keep].sum(axis=0))


def fit_tables(
    lines: Lines,
    basket_label: np.ndarray,
    classes: Sequence[str],
    *,
    hierarchy_names: Sequence[str],
    evidence_power: float = 2.0,
    prior_strength: float = 1.0,
    price_bands: int = 32,
    n_folds: int = 0,
    latent_groups: int = 5,
    seed: int = 0,
    basket_fold: np.ndarray | None = None,
) -> tuple[FeatureTables, FoldCounts | None]:
    """Learn the tables from labelled lines (`basket_label[b]` = class index of basket b).

    With `n_folds` > 1 it also returns per-fold counts for leak-free training features (`basket_fold`: each
    basket's fold, default a seeded draw). Streamed training computes the same over chunks (training/accumulate).
    """
    n_classes = len(classes)
    if basket_fold is None:
        basket_fold = np.random.default_rng(seed).integers(0, max(n_folds, 1), lines.n_baskets, dtype=np.int16)
    line_fold = basket_fold[lines.basket]
    # The per-line arrays of the counting live only inside `_count_lines`: freed before the estimations.
    counted = _count_lines(lines, basket_label, n_classes, evidence_power, price_bands, line_fold, n_folds)
    tables = FeatureTables(
        classes=tuple(classes),
        levels=tuple(LevelTable(name, v, c) for name, v, c in
                     zip(["product", *hierarchy_names], counted.vocabs, counted.per_level, strict=True)),
        price_edges=counted.edges, price_counts=counted.by_band,
        prior=np.bincount(basket_label, minlength=n_classes).astype(float),
        evidence_power=evidence_power, prior_strength=prior_strength, hierarchy_names=tuple(hierarchy_names),
    )
    products = counted.products
    tables = replace(tables, latent=products.learn(tables, None, seed))
    if n_folds <= 1:
        return tables, None
    per_fold = counted.per_fold
    folds = FoldCounts(
        n_folds=n_folds, line_fold=line_fold,
        level_counts=tuple(np.stack([fc[0][i] for fc in per_fold]) for i in range(len(counted.vocabs))),
        price_counts=np.stack([fc[1] for fc in per_fold]),
        prior=np.stack([np.bincount(basket_label, weights=(basket_fold == f).astype(float),
                                    minlength=n_classes) for f in range(n_folds)]),
    )
    # The latent classes cost an estimation each, so folds share them in groups (fold f in group
    # f % groups); a group's estimate uses none of its folds' labels.
    groups = min(latent_groups, n_folds)
    fold_group = np.arange(n_folds) % groups
    fold_latent = tuple(products.learn(folds.tables_of(fold_group != g, tables),
                                       fold_group[basket_fold] != g, seed) for g in range(groups))
    return tables, replace(folds, latent=fold_latent)


@dataclass(frozen=True)
class _Counted:
    vocabs: list[np.ndarray]
    edges: np.ndarray
    per_level: list[np.ndarray]
    by_band: np.ndarray
    per_fold: list[tuple[list[np.ndarray], np.ndarray]]  # (per level, per band) of each fold's lines
    products: _ProductLines


def _count_lines(lines: Lines, basket_label: np.ndarray, n_classes: int, evidence_power: float, price_bands: int,
                 line_fold: np.ndarray, n_folds: int) -> _Counted:
    """Evidence-weighted class counts per code of every level and per price band, overall and per fold."""
    per_basket = np.bincount(lines.basket, minlength=lines.n_baskets)
    # Per basket, then spread to lines: per-line arrays are the memory of a 50-million-line run.
    weight = (1.0 / np.maximum(per_basket, 1) ** evidence_power)[lines.basket]
    cls = basket_label[lines.basket].astype(np.int32)
    # Prices and bands by the featurization's own code, so the counted bands are the ones it reads.
    log_price = np.empty(lines.n_lines)
    kernel.log_prices(as_f64(lines.spend), as_f64(lines.quantity), log_price)
    quantiles = np.linspace(0, 1, price_bands + 1)[1:-1]
    edges = as_f64(np.unique(np.quantile(log_price, quantiles))) if lines.n_lines else np.zeros(0)
    band = np.empty(lines.n_lines, dtype=np.int32)
    kernel.price_bands(log_price, edges, band)
    del log_price
    sources = [lines.product, *lines.hierarchy]
    vocabs = [_vocab(src) for src in sources]
    level_rows = [lookup(v, src, lines.n_lines) for v, src in zip(vocabs, sources, strict=True)]

    def counts(line_weight: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        per_level = [_class_counts(rows.clip(0), v.size, cls, line_weight * (rows >= 0), n_classes)
                     for v, rows in zip(vocabs, level_rows, strict=True)]
        return per_level, _class_counts(band, edges.size + 1, cls, line_weight, n_classes)

    per_level, by_band = counts(weight)
    per_fold = [counts(weight * (line_fold == f)) for f in range(n_folds)] if n_folds > 1 else []
    products = _ProductLines(lines, level_rows, basket_label, vocabs[0].size)
    return _Counted(vocabs, edges, per_level, by_band, per_fold, products)


class _ProductLines:
    """The training lines as product rows per basket, to learn latent classes from any subset of baskets."""

    def __init__(self, lines: Lines, level_rows: Sequence[np.ndarray], basket_label: np.ndarray, n_products: int):
        self.label, self.n_baskets = basket_label, lines.n_baskets
        known = level_rows[0] >= 0
        # Training lines all have a known product: then these are views, not copies of every line.
        self.product, self.basket = ((level_rows[0], lines.basket) if known.all()
                                     else (level_rows[0][known], lines.basket[known]))
        # One line per product stands for it: products nest in the hierarchy, so its codes are the product's.
        first = np.full(n_products, self.product.size, dtype=np.int64)
        for sl in _chunks(self.product.size):
            np.minimum.at(first, self.product[sl], np.arange(sl.start, sl.stop))
        stand_in = first if known.all() else np.flatnonzero(known)[first]
        self.stand_in = lines.take(stand_in)

    def learn(self, tables: FeatureTables, used: np.ndarray | None, seed: int) -> LatentTables:
        """Latent classes from the labels of the `used` baskets only (None: all of them)."""
        # No copy of the lines when every basket counts (the estimate for serving); else a boolean mask.
        product, basket = self.product, self.basket
        if used is not None:
            keep = used[basket]
            product, basket = product[keep], basket[keep]
        chunk = latent_fit.EMChunk(product, basket, np.asarray(self.label), np.arange(self.n_baskets, dtype=np.uint64))
        n_lines = np.bincount(product, minlength=self.stand_in.n_lines).astype(float)
        enc = encode(self.stand_in, tables)
        return learn_latent(self.stand_in, enc, tables, lambda: [lambda: chunk], n_lines, seed)


def learn_latent(stand_in: Lines, enc: Encoded, tables: FeatureTables, chunks: latent_fit.Chunks,
                 n_lines: np.ndarray, seed: int, pool: latent_fit.Pool | None = None) -> LatentTables:
    """Latent classes from the lines `chunks()` yields; `stand_in` is one line per product (its codes, as
    `enc`, are the product's), `n_lines` the lines of each product the chunks hold."""
    start, _ = line_distributions(stand_in, enc, tables)
    # The prior leaves the product's own counts out: they are the evidence the estimate weighs anew.
    no_product = replace(tables.levels[0], counts=np.zeros_like(tables.levels[0].counts))
    prior, _ = line_distributions(stand_in, enc, replace(tables, levels=(no_product, *tables.levels[1:])))
    posterior, coef, intercept = latent_fit.estimate_chunks(chunks, start, prior, seed=seed, pool=pool)
    n_lines = np.asarray(n_lines, dtype=float)
    seen = (n_lines > 0).astype(float)
    codes, vocabs = enc.level_rows[1:], [lv.vocab for lv in tables.levels[1:]]
    level_counts = tuple(_class_counts_soft(rows, vocab.size, posterior * seen[:, None])
                         for rows, vocab in zip(codes, vocabs, strict=True))
    level_totals = tuple(np.bincount(np.maximum(rows, 0), weights=seen * (rows >= 0), minlength=vocab.size)
                         for rows, vocab in zip(codes, vocabs, strict=True))
    mean = (posterior * seen[:, None]).sum(axis=0) / max(seen.sum(), 1.0)
    return LatentTables(posterior=posterior, lines=n_lines, level_counts=level_counts,
                        level_totals=level_totals, mean=mean, coef=coef, intercept=intercept)


def _class_counts_soft(rows: np.ndarray, n_rows: int, values: np.ndarray) -> np.ndarray:
    """Per code, the sum of the (n, K) `values` of the items with that code (rows < 0 are ignored)."""
    known = rows >= 0
    return latent.sum_by_index(rows[known], values[known], n_rows)


def _vocab(codes: Codes | None) -> np.ndarray:
    if codes is None:
        return np.array([], dtype=str)
    used = np.unique(codes.index[codes.index >= 0])
    return np.sort(codes.values[used].astype(str))


def out_of_fold_features(lines: Lines, tables: FeatureTables, folds: FoldCounts) -> np.ndarray:
    """Training rows: `basket_features`, each line described by tables learned without its own basket's
    fold, so no basket's label leaks into its own features."""
    sums = BasketSums(lines.n_baskets, tables.n_classes)
    for f in range(folds.n_folds):
        sub = lines.take(np.flatnonzero(folds.line_fold == f))
        # Encoded a fold at a time: per-line codes for all lines at once would cost ~32 bytes a line more.
        sums.add(encode(sub, tables), sub.spend, sub.quantity, sub.basket, folds.tables_without(f, tables))
    basket_fold = np.zeros(lines.n_baskets, dtype=np.int16)
    basket_fold[lines.basket] = folds.line_fold
    return sums.finish(folds.latent, basket_fold % len(folds.latent))
