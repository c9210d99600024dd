"""THE featurization: transaction lines -> one row of model features per basket.

Training and serving both call `basket_features` (serving through `Predictor`), so the two can never
drift apart. Everything works on a flat table of lines with a basket index: one call handles one basket or
ten million. The per-line and per-basket loops are compiled (`kernel.pyx`): at one basket NumPy's
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
from typing import Any

import numpy as np

from ..contract import Codes, Lines
from . import kernel, latent
from .latent import LatentTables, as_f64

FEATURE_SPEC_VERSION = 2
_DICT_LOOKUP_MAX = 64  # distinct codes up to which a dict beats a vectorised search


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
        if codes.index.size <= _DICT_LOOKUP_MAX:  # a request's few lines: lists beat NumPy's call overheads
            return np.array([found[i] if i >= 0 else -1 for i in codes.index.tolist()], dtype=np.int32)
        return np.array([*found, -1], dtype=np.int32)[codes.index]  # index -1 (missing) picks the final -1


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
    def source_names(self) -> list[str]:
        """Where a line's class distribution comes from, by the finest level whose code the tables know: index
        0 the product, j hierarchy level j of `levels`; the last entry (-1) none: its unit-price band."""
        return ["product", *(f"hierarchy:{lv.name}" for lv in self.levels[1:]), "price_band"]

    @cached_property
    def n_features(self) -> int:
        return len(self.feature_names())

    @cached_property
    def composition(self) -> tuple[np.ndarray, np.ndarray]:
        """The latent classes' composition model, as the compiled loops take it."""
        return _latent_of(self).composition

    @cached_property
    def kernel(self) -> kernel.KernelTables:
        """The tables as the compiled per-line loop reads them (built once per tables)."""
        return kernel.KernelTables(self.edges, *self.stacked, self.prior_share,
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
# Per-line class distributions and their per-basket sums (the loops are compiled: kernel.pyx)
# ------------------------------------------------------------------------------------------------
def line_distributions(lines: Lines, enc: Encoded, tables: FeatureTables) -> tuple[np.ndarray, np.ndarray]:
    """Class distribution of each line, and the product-level evidence behind it.

    The smoothing is a chain of Bayesian updates, coarse to fine: p <- (c_l + m p) / (t_l + m) from the
    global prior through the price band and each hierarchy level to the product, skipping every level
    whose code is unknown.
    """
    n = enc.level_rows.shape[1]
    p, evidence = np.empty((n, tables.n_classes)), np.empty(n)
    kernel.line_distributions(enc.level_rows, as_f64(lines.spend), as_f64(lines.quantity), tables.edges,
                                        *tables.stacked, tables.prior_share, tables.prior_strength, p, evidence)
    return p, evidence


class BasketSums:
    """Per-basket sums and maxima of what describes each line (layout: kernel.pyx), filled from
    one or more sets of lines, then turned into feature rows."""

    def __init__(self, n_baskets: int, n_classes: int):
        self.k = n_classes
        self.sums = np.zeros((n_baskets, kernel.SUMMED_PER_CLASS * n_classes + kernel.N_STATS))
        self.p_max = np.zeros((n_baskets, n_classes))

    def add(self, enc: Encoded, spend: np.ndarray, quantity: np.ndarray, basket: np.ndarray,
            tables: FeatureTables) -> None:
        """Each line (its code rows, spend, quantity, basket) described with `tables` and added to its
        basket, in line order (so a basket's sums have the same bits whichever other baskets come with it)."""
        kernel.add_lines(enc.level_rows, as_f64(spend), as_f64(quantity),
                                   np.ascontiguousarray(basket, dtype=np.int32), tables.kernel, self.sums, self.p_max)

    def finish(self, models: Sequence[LatentTables], model_of: np.ndarray | None = None) -> np.ndarray:
        """The feature rows; basket b's label probabilities from `models[model_of[b]]` (default: the first)."""
        n = self.sums.shape[0]
        out = np.empty((n, kernel.OUT_PER_CLASS * self.k + kernel.N_STATS), dtype=np.float32)
        model_of = np.zeros(n, dtype=np.int32) if model_of is None else np.ascontiguousarray(model_of, dtype=np.int32)
        if len(models) == 1:
            coef, intercept = models[0].composition
        else:
            coef, intercept = (np.concatenate(parts) for parts in zip(*(lt.composition for lt in models), strict=True))
        kernel.basket_rows(self.sums, self.p_max, coef, intercept, model_of, out)
        return out


def basket_features(lines: Lines, tables: FeatureTables, *, enc: Encoded | None = None) -> np.ndarray:
    """The model's input: one float32 row per basket, columns as `tables.feature_names()`. `enc` is
    `encode(lines, tables)` when the caller already has it. (Training's leak-free form is
    `fitting.out_of_fold_features`, through the same `BasketSums`.)"""
    enc = enc if enc is not None else encode(lines, tables)
    return encoded_features(enc, lines.spend, lines.quantity, lines.basket, lines.n_baskets, tables)


def encoded_features(enc: Encoded, spend: np.ndarray, quantity: np.ndarray, basket: np.ndarray, n_baskets: int,
                     tables: FeatureTables) -> np.ndarray:
    """`basket_features` of lines already looked up in the tables (`enc`): what serving calls, with the
    lines a client sent (`client.encode_clients`)."""
    sums = BasketSums(n_baskets, tables.n_classes)
    sums.add(enc, spend, quantity, basket, tables)
    return sums.finish([_latent_of(tables)])


def _latent_of(tables: FeatureTables) -> LatentTables:
    if tables.latent is None:
        raise ValueError("tables without latent classes (learn them with fit_tables)")
    return tables.latent
