"""THE featurization: transaction lines -> one row of model features per basket.

Training and serving both call `basket_features` (serving through `Predictor`), so the two can never
drift apart. Everything works on a flat table of lines with a basket index: one call handles one basket or
ten million. The per-line and per-basket loops are compiled (`featurize_kernel.pyx`): at one basket NumPy's
per-call overhead, not arithmetic, was the cost.

How a line is described. Each training basket's label is evidence about the products in it, and the
fewer products a basket holds the more its label says about each of them, so a line's evidence weight
is ``1 / lines_in_basket ** evidence_power``. Summing that weight per (product, class), and per (level of
the product hierarchy, class), gives learned tables. A line's class distribution is then smoothed from
the coarsest knowledge to the finest: the global class prior, the price band of its unit price, each
hierarchy level from the top down, and finally the product itself, each level pulling the estimate
towards its own counts in proportion to its evidence. A product never seen in training thus falls back
to its hierarchy, and one with no known hierarchy to its price.

How a basket is described. Per class: the mean line probability (by line and by spend), the share of
lines (by count and by spend) whose most likely class it is, and the largest line probability; plus the
basket's size, spend, quantity, price level and how much of it the tables know.

Latent classes (see `latent.py`). The tables above blur the class of a product seen only in baskets of
many lines; a second description estimates each product's own class from the labels of its baskets and a
learned model of how a basket's label follows from its lines' classes. Per class a basket then also gets
its lines' expected share of the class, the probability that all its lines are of it, that composition
model's probability of the label, and the share of lines whose likeliest class it is. A line's latent
class is one table lookup (its product's, else its hierarchy's), so serving stays as cheap.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from . import featurize_kernel, latent
from .latent import LatentTables, as_f64

FEATURE_SPEC_VERSION = 2
_LINE_CHUNK = 1 << 20  # lines per chunk of the counting: bounds the memory of its (row, class) keys
_DICT_LOOKUP_MAX = 64  # distinct codes up to which a dict beats a vectorised search


class Codes(NamedTuple):
    """A string column, dictionary-encoded: `values[index[i]]` is line i's code; index -1 = missing.
    (A named tuple: cheap to build, where a frozen dataclass costs several times more.)"""

    values: np.ndarray
    index: np.ndarray

    @classmethod
    def from_strings(cls, strings: Sequence[str | None] | np.ndarray) -> Codes:
        """One value per line (no dictionary building); None or "" = missing."""
        values = np.array(["" if v is None else str(v) for v in strings], dtype=object)
        index = np.arange(values.size, dtype=np.int32)
        index[values == ""] = -1
        return cls(values, index)

    def take(self, lines: np.ndarray | slice) -> Codes:
        return Codes(self.values, self.index[lines])


@dataclass(frozen=True)
class Lines:
    """Transaction lines of one or many baskets. `basket[i]` in 0..n_baskets-1 is line i's basket."""

    basket: np.ndarray
    n_baskets: int
    product: Codes
    quantity: np.ndarray
    spend: np.ndarray
    hierarchy: tuple[Codes | None, ...] = ()  # finest level first, as in the feature spec

    @property
    def n_lines(self) -> int:
        return int(self.basket.shape[0])

    def take(self, lines: np.ndarray | slice) -> Lines:
        """A subset of lines (basket numbering unchanged); a slice gives views, not copies."""
        return Lines(
            basket=self.basket[lines], n_baskets=self.n_baskets, product=self.product.take(lines),
            quantity=self.quantity[lines], spend=self.spend[lines],
            hierarchy=tuple(None if h is None else h.take(lines) for h in self.hierarchy),
        )

    def basket_range(self, start: int, stop: int) -> Lines:
        """Baskets start..stop-1, renumbered from 0, as views: the lines must be grouped by basket (sorted)."""
        lo, hi = np.searchsorted(self.basket, [start, stop])
        run = slice(int(lo), int(hi))
        return replace(self.take(run), basket=self.basket[run] - start, n_baskets=stop - start)

    def grouped(self) -> bool:
        return self.n_lines < 2 or bool((self.basket[1:] >= self.basket[:-1]).all())


@dataclass(frozen=True)
class LevelTable:
    """Evidence-weighted class counts for the codes of one level (products, or one hierarchy level)."""

    name: str
    vocab: np.ndarray  # sorted unique codes
    counts: np.ndarray  # (len(vocab), n_classes) float64

    @cached_property
    def row_of(self) -> dict[str, int]:
        return {code: row for row, code in enumerate(self.vocab.tolist())}

    def rows(self, codes: Codes | None, n_lines: int) -> np.ndarray:
        """Row of each line's code, -1 where missing or unknown (see `lookup`).

        A few distinct codes are looked up in a dict, which is several times faster than NumPy's string search
        at that size; both are exact matches, so the answer is the same.
        """
        if codes is None or codes.values.size > _DICT_LOOKUP_MAX:
            return lookup(self.vocab, codes, n_lines)
        get = self.row_of.get
        found = [get(str(v), -1) for v in codes.values.tolist()]
        return np.array([found[i] if i >= 0 else -1 for i in codes.index.tolist()], dtype=np.int32)


@dataclass(frozen=True)
class FeatureTables:
    """Everything the featurization learned from the training weeks; stored in the model artifact."""

    classes: tuple[str, ...]
    levels: tuple[LevelTable, ...]  # products first, then the hierarchy finest to coarsest
    price_edges: np.ndarray  # inner edges of the log unit-price bands
    price_counts: np.ndarray  # (len(price_edges) + 1, n_classes)
    prior: np.ndarray  # (n_classes,) class counts
    evidence_power: float = 2.0
    prior_strength: float = 1.0
    hierarchy_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    latent: LatentTables | None = None  # always set by `fit_tables`; None only while it is being built

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @cached_property
    def stacked(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every table in one matrix in smoothing order (price bands, coarsest level, ..., products), its row
        totals, and the row where each table starts: the form the compiled loops take."""
        blocks = [self.price_counts, *(lv.counts for lv in reversed(self.levels))]
        return latent.stack_counts(blocks, [block.sum(axis=1) for block in blocks])

    @cached_property
    def row_tables(self) -> list[dict[str, int]]:
        """Each level's code -> row dict, products first: how client codes are looked up."""
        return [lv.row_of for lv in self.levels]

    @cached_property
    def n_features(self) -> int:
        return len(self.feature_names())

    @cached_property
    def composition(self) -> tuple[np.ndarray, np.ndarray]:
        """The latent classes' composition model, as the compiled loops take it."""
        return _latent_of(self).composition

    @cached_property
    def kernel(self) -> featurize_kernel.KernelTables:
        """The tables as the compiled per-line loop reads them (built once per tables)."""
        return featurize_kernel.KernelTables(self.edges, *self.stacked, self.prior_share,
                                             *_latent_of(self).kernel_arrays, self.prior_strength, latent.EPS)

    @cached_property
    def edges(self) -> np.ndarray:
        return as_f64(self.price_edges)

    @cached_property
    def prior_share(self) -> np.ndarray:
        return self.prior / max(self.prior.sum(), 1e-12)

    def feature_names(self) -> list[str]:
        per_class = ("p_mean", "p_spend", "vote_share", "vote_spend", "p_max", *_LATENT_STATS)
        names = [f"{stat}_{c}" for stat in per_class for c in self.classes]
        return [*names, *_BASKET_STATS]

    def with_counts(self, level_counts: Sequence[np.ndarray], price_counts: np.ndarray,
                    prior: np.ndarray) -> FeatureTables:
        levels = tuple(replace(lv, counts=c) for lv, c in zip(self.levels, level_counts, strict=True))
        return replace(self, levels=levels, price_counts=price_counts, prior=prior)

    # ---- storage: plain NumPy arrays (loaded with allow_pickle=False) plus a JSON spec ----
    def to_npz_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {
            "price_edges": self.price_edges, "price_counts": self.price_counts, "prior": self.prior,
        }
        for i, lv in enumerate(self.levels):
            arrays[f"level{i}_vocab"] = lv.vocab.astype(str)
            arrays[f"level{i}_counts"] = lv.counts
        if self.latent is not None:
            arrays.update(self.latent.arrays())
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    def spec(self) -> dict[str, Any]:
        return {
            "feature_spec_version": FEATURE_SPEC_VERSION,
            "classes": list(self.classes),
            "levels": [lv.name for lv in self.levels],
            "hierarchy": list(self.hierarchy_names),
            "evidence_power": self.evidence_power,
            "prior_strength": self.prior_strength,
            "feature_names": self.feature_names(),
            "extra": self.extra,
        }

    @classmethod
    def load(cls, spec: dict[str, Any], npz: bytes) -> FeatureTables:
        if spec.get("feature_spec_version") != FEATURE_SPEC_VERSION:
            raise ValueError(f"the model was built with feature spec version {spec.get('feature_spec_version')!r}; "
                             f"this version serves version {FEATURE_SPEC_VERSION}: retrain it with "
                             "`retail-prediction train`")
        with np.load(io.BytesIO(npz), allow_pickle=False) as data:
            levels = tuple(
                LevelTable(name, data[f"level{i}_vocab"], data[f"level{i}_counts"])
                for i, name in enumerate(spec["levels"])
            )
            tables = cls(
                classes=tuple(spec["classes"]), levels=levels, price_edges=data["price_edges"],
                price_counts=data["price_counts"], prior=data["prior"],
                evidence_power=float(spec["evidence_power"]), prior_strength=float(spec["prior_strength"]),
                hierarchy_names=tuple(spec["hierarchy"]), extra=dict(spec.get("extra", {})),
                latent=LatentTables.from_arrays(data, len(levels) - 1),
            )
        if tables.feature_names() != spec["feature_names"]:
            raise ValueError("feature names in the spec do not match the tables")
        return tables

    def spec_json(self) -> bytes:
        return json.dumps(self.spec(), indent=2, sort_keys=True).encode()


# Per class, from the latent product classes: expected share of the lines, P(all lines of the class),
# the composition model's probability of the basket label, share of lines whose likeliest class it is.
_LATENT_STATS = ("q_share", "q_pure", "g_prob", "q_vote")
_BASKET_STATS = (
    "n_lines", "log_spend", "log_quantity", "mean_log_unit_price", "unseen_product_share",
    "unknown_hierarchy_share", "mean_log_evidence",
)


# ------------------------------------------------------------------------------------------------
# Encoding: codes -> row numbers in the learned tables
# ------------------------------------------------------------------------------------------------
def lookup(vocab: np.ndarray, codes: Codes | None, n_lines: int) -> np.ndarray:
    """Row of each line's code in a sorted vocabulary, -1 where missing or unknown.

    Only the distinct values are searched, so the cost is per distinct code, not per line.
    """
    if codes is None or vocab.size == 0 or codes.values.size == 0:
        return np.full(n_lines, -1, dtype=np.int32)
    pos = np.minimum(np.searchsorted(vocab, codes.values), vocab.size - 1)
    found = np.where(vocab[pos] == codes.values, pos, -1).astype(np.int32)
    return np.where(codes.index >= 0, found[np.maximum(codes.index, 0)], -1).astype(np.int32)


@dataclass(frozen=True)
class Encoded:
    level_rows: np.ndarray  # (levels, lines): row of each line's code per level (products first), -1 unknown


def encode(lines: Lines, tables: FeatureTables) -> Encoded:
    hierarchy = dict(zip(tables.hierarchy_names, lines.hierarchy, strict=False))
    sources = [lines.product, *(hierarchy.get(name) for name in tables.hierarchy_names)]
    rows = np.empty((len(sources), lines.n_lines), dtype=np.int32)
    for level, (lv, src) in enumerate(zip(tables.levels, sources, strict=True)):
        rows[level] = lv.rows(src, lines.n_lines)
    return Encoded(rows)


# ------------------------------------------------------------------------------------------------
# Per-line class distributions and their per-basket sums (the loops are compiled: featurize_kernel.pyx)
# ------------------------------------------------------------------------------------------------
def line_distributions(lines: Lines, enc: Encoded, tables: FeatureTables) -> tuple[np.ndarray, np.ndarray]:
    """Class distribution of each line, and the product-level evidence behind it.

    The smoothing is a chain of Bayesian updates, coarse to fine: p <- (c_l + m p) / (t_l + m) from the
    global prior through the price band and each hierarchy level to the product, skipping every level
    whose code is unknown.
    """
    n = enc.level_rows.shape[1]
    p, evidence = np.empty((n, tables.n_classes)), np.empty(n)
    featurize_kernel.line_distributions(enc.level_rows, as_f64(lines.spend), as_f64(lines.quantity), tables.edges,
                                        *tables.stacked, tables.prior_share, tables.prior_strength, p, evidence)
    return p, evidence


class _BasketSums:
    """Per-basket sums and maxima of what describes each line (layout: featurize_kernel.pyx), filled from
    one or more sets of lines, then turned into feature rows."""

    def __init__(self, n_baskets: int, n_classes: int):
        self.k = n_classes
        self.sums = np.zeros((n_baskets, featurize_kernel.SUMMED_PER_CLASS * n_classes + featurize_kernel.N_STATS))
        self.p_max = np.zeros((n_baskets, n_classes))

    def add(self, enc: Encoded, spend: np.ndarray, quantity: np.ndarray, basket: np.ndarray,
            tables: FeatureTables) -> None:
        """Each line (its code rows, spend, quantity, basket) described with `tables` and added to its
        basket, in line order (so a basket's sums have the same bits whichever other baskets come with it)."""
        featurize_kernel.add_lines(enc.level_rows, as_f64(spend), as_f64(quantity),
                                   np.ascontiguousarray(basket, dtype=np.int32), tables.kernel, self.sums, self.p_max)

    def finish(self, models: Sequence[LatentTables], model_of: np.ndarray | None = None) -> np.ndarray:
        """The feature rows; basket b's label probabilities from `models[model_of[b]]` (default: the first)."""
        n = self.sums.shape[0]
        out = np.empty((n, featurize_kernel.OUT_PER_CLASS * self.k + featurize_kernel.N_STATS), dtype=np.float32)
        model_of = np.zeros(n, dtype=np.int32) if model_of is None else np.ascontiguousarray(model_of, dtype=np.int32)
        if len(models) == 1:
            coef, intercept = models[0].composition
        else:
            coef, intercept = (np.concatenate(parts) for parts in zip(*(lt.composition for lt in models), strict=True))
        featurize_kernel.basket_rows(self.sums, self.p_max, coef, intercept, model_of, out)
        return out


def basket_features(lines: Lines, tables: FeatureTables, *, folds: FoldCounts | None = None,
                    enc: Encoded | None = None) -> np.ndarray:
    """The model's input: one float32 row per basket, columns as `tables.feature_names()`.

    With `folds` (training only), each line is described by tables learned without its own basket's
    fold, so no basket's label leaks into its own features. `enc` is `encode(lines, tables)` when the
    caller already has it.
    """
    if folds is None:
        enc = enc if enc is not None else encode(lines, tables)
        return encoded_features(enc, lines.spend, lines.quantity, lines.basket, lines.n_baskets, tables)
    sums = _BasketSums(lines.n_baskets, tables.n_classes)
    for f in range(folds.n_folds):
        sub = lines.take(np.flatnonzero(folds.line_fold == f))
        # Encoded a fold at a time: per-line codes for all lines at once would cost ~32 bytes a line more.
        sums.add(encode(sub, tables), sub.spend, sub.quantity, sub.basket, folds.tables_without(f, tables))
    basket_fold = np.zeros(lines.n_baskets, dtype=np.int16)
    basket_fold[lines.basket] = folds.line_fold
    return sums.finish(folds.latent, basket_fold % len(folds.latent))


def encoded_features(enc: Encoded, spend: np.ndarray, quantity: np.ndarray, basket: np.ndarray, n_baskets: int,
                     tables: FeatureTables) -> np.ndarray:
    """`basket_features` of lines already looked up in the tables (`enc`): what serving calls, with the
    lines a client sent (`predictor.encode_clients`)."""
    sums = _BasketSums(n_baskets, tables.n_classes)
    sums.add(enc, spend, quantity, basket, tables)
    return sums.finish([_latent_of(tables)])


def _latent_of(tables: FeatureTables) -> LatentTables:
    if tables.latent is None:
        raise ValueError("tables without latent classes (learn them with fit_tables)")
    return tables.latent


def _chunks(n: int) -> list[slice]:
    return [slice(i, min(i + _LINE_CHUNK, n)) for i in range(0, n, _LINE_CHUNK)] or [slice(0, 0)]


# ------------------------------------------------------------------------------------------------
# Learning the tables
# ------------------------------------------------------------------------------------------------
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
) -> tuple[FeatureTables, FoldCounts | None]:
    """Learn the tables from labelled lines (`basket_label[b]` = class index of basket b).

    With `n_folds` > 1 it also returns per-fold counts for leak-free training features.
    """
    n_classes = len(classes)
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
    featurize_kernel.log_prices(as_f64(lines.spend), as_f64(lines.quantity), log_price)
    quantiles = np.linspace(0, 1, price_bands + 1)[1:-1]
    edges = as_f64(np.unique(np.quantile(log_price, quantiles))) if lines.n_lines else np.zeros(0)
    band = np.empty(lines.n_lines, dtype=np.int32)
    featurize_kernel.price_bands(log_price, edges, band)
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
        self.codes = [rows[stand_in] for rows in level_rows[1:]]

    def learn(self, tables: FeatureTables, used: np.ndarray | None, seed: int) -> LatentTables:
        """Latent classes from the labels of the `used` baskets only (None: all of them)."""
        n_products = self.stand_in.n_lines
        enc = encode(self.stand_in, tables)
        start, _ = line_distributions(self.stand_in, enc, tables)
        # The prior leaves the product's own counts out: they are the evidence the estimate weighs anew.
        no_product = replace(tables.levels[0], counts=np.zeros_like(tables.levels[0].counts))
        prior, _ = line_distributions(self.stand_in, enc, replace(tables, levels=(no_product, *tables.levels[1:])))
        # No copy of the lines when every basket counts (the estimate for serving); else a boolean mask.
        product, basket = self.product, self.basket
        if used is not None:
            keep = used[basket]
            product, basket = product[keep], basket[keep]
        posterior, coef, intercept = latent.estimate(product, basket, self.label, self.n_baskets,
                                                     start, prior, seed=seed)
        n_lines = np.bincount(product, minlength=n_products).astype(float)
        seen = (n_lines > 0).astype(float)
        level_counts = tuple(_class_counts_soft(rows, vocab.size, posterior * seen[:, None])
                             for rows, vocab in zip(self.codes, (lv.vocab for lv in tables.levels[1:]), strict=True))
        level_totals = tuple(np.bincount(np.maximum(rows, 0), weights=seen * (rows >= 0), minlength=vocab.size)
                             for rows, vocab in zip(self.codes, (lv.vocab for lv in tables.levels[1:]), strict=True))
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
