"""Each product's latent class, estimated from the labels of the baskets it appears in (EM-style).

Why. A one-line basket's label tells its product's class directly; in a basket of many lines the label
is a function of the mix of its products' classes, so evidence weighting (1/n²) alone can only blur it.
Here both pieces are learned from the data, alternately:

* the *composition model* g: basket label given the class mix of its lines (a multinomial logistic
  regression on the expected class shares of the lines and the probability that all lines share one
  class), fitted on the training baskets with their lines at the current product estimates;
* each product's class posterior: its hierarchy prior times, over every training line of the product,
  g(basket label | that line of class z, the basket's other lines at their current estimates).

Products never seen fall back to their hierarchy: posteriors summed per hierarchy code and smoothed from
the coarsest level to the finest, as the evidence tables are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

EPS = 1e-6  # floor of a class probability inside logs: a line is never *certainly* not a class


@dataclass(frozen=True)
class LatentTables:
    """Learned product posteriors, their hierarchy aggregates, and the composition model."""

    posterior: np.ndarray  # (n_products, K); rows follow the product vocabulary
    lines: np.ndarray  # (n_products,) training lines behind each posterior (0 = unseen: fall back)
    level_counts: tuple[np.ndarray, ...]  # per hierarchy level (finest first): summed posteriors per code
    level_totals: tuple[np.ndarray, ...]  # products per code
    mean: np.ndarray  # (K,) mean posterior of the seen products: the fallback's root
    coef: np.ndarray  # (K, 2K) composition model: class shares, then log P(all lines of a class)
    intercept: np.ndarray  # (K,)

    @cached_property
    def kernel_arrays(self) -> tuple[np.ndarray, ...]:
        """What the compiled featurization takes: posteriors, their lines, the hierarchy tables stacked
        coarsest first (counts, totals, starts; see `stack_counts`) and the mean posterior."""
        stacked = stack_counts(self.level_counts[::-1], self.level_totals[::-1])
        return as_f64(self.posterior), as_f64(self.lines), *stacked, as_f64(self.mean)

    @cached_property
    def composition(self) -> tuple[np.ndarray, np.ndarray]:
        """The composition model as the compiled featurization takes it: (1, K, 2K) and (1, K)."""
        return as_f64(self.coef[None]), as_f64(self.intercept[None])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"latent_posterior": self.posterior, "latent_lines": self.lines, "latent_mean": self.mean,
               "latent_coef": self.coef, "latent_intercept": self.intercept}
        for i, (c, t) in enumerate(zip(self.level_counts, self.level_totals, strict=True)):
            out[f"latent_level{i}_counts"], out[f"latent_level{i}_totals"] = c, t
        return out

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray] | np.lib.npyio.NpzFile, n_levels: int) -> LatentTables:
        return cls(
            posterior=data["latent_posterior"], lines=data["latent_lines"], mean=data["latent_mean"],
            level_counts=tuple(data[f"latent_level{i}_counts"] for i in range(n_levels)),
            level_totals=tuple(data[f"latent_level{i}_totals"] for i in range(n_levels)),
            coef=data["latent_coef"], intercept=data["latent_intercept"],
        )


def stack_counts(counts: Sequence[np.ndarray], totals: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Tables of class counts (codes x K) and their per-code totals, each stacked into one array, plus the
    row where each table starts."""
    starts = np.cumsum([0, *(c.shape[0] for c in counts)])[:-1].astype(np.int64)
    k = counts[0].shape[1] if counts else 0
    return (as_f64(np.concatenate(counts) if counts else np.zeros((1, k))),
            as_f64(np.concatenate(totals) if totals else np.zeros(1)), starts)


def as_f64(values: np.ndarray) -> np.ndarray:
    """A contiguous float64 array (no copy when it already is one): what the compiled loops take."""
    return np.ascontiguousarray(values, dtype=np.float64)


def composition_inputs(share: np.ndarray, log_pure: np.ndarray) -> np.ndarray:
    """The composition model's inputs: class shares of the lines, P(all lines of class k) per class."""
    return np.concatenate([share, np.exp(log_pure)], axis=1)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sum_by_index(index: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(n, K) sums of the (m, K) `values` per `index` in 0..n-1 (e.g. per basket, per code), in one bincount."""
    k = values.shape[1]
    flat = (index.astype(np.int64)[:, None] * k + np.arange(k)).ravel()
    return np.bincount(flat, weights=values.ravel(), minlength=n * k).reshape(n, k)
