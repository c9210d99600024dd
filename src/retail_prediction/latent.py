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
from typing import Any

import numpy as np

EPS = 1e-6  # floor of a class probability inside logs: a line is never *certainly* not a class
G_SAMPLE = 20_000  # baskets the composition model learns from per iteration (it has 2K² + K parameters)
G_C = 100.0  # weak regularisation: the composition model's boundaries are sharp
CHUNK = 1 << 18  # lines per step of the estimation: bounds its per-line temporaries (~70 MB)


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


def _sample(used: np.ndarray, seed: int) -> np.ndarray:
    """The baskets the composition model learns from: at most G_SAMPLE of the used ones."""
    candidates = np.flatnonzero(used)
    return candidates[np.random.default_rng(seed).choice(candidates.size, min(G_SAMPLE, candidates.size),
                                                         replace=False)]


def _fit_composition(x: np.ndarray, y: np.ndarray, n_classes: int,
                     warm: Any | None) -> tuple[np.ndarray, np.ndarray, Any]:
    """The composition model fitted on sampled baskets (warm-started from the previous iteration's)."""
    from sklearn.linear_model import LogisticRegression

    model = warm or LogisticRegression(C=G_C, max_iter=200, warm_start=True)
    if warm is not None and set(np.unique(y)) != set(model.classes_.tolist()):
        model = LogisticRegression(C=G_C, max_iter=200, warm_start=True)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # tiny matrices: BLAS threads only contend with each other
        model.fit(x, y)
    coef = np.zeros((n_classes, x.shape[1]))
    intercept = np.full(n_classes, -30.0)  # a class absent from these labels is never predicted
    seen = model.classes_.astype(int)
    if seen.size == 2:  # sklearn's binary form: one row for the second class
        coef[seen[1]], intercept[seen[1]] = model.coef_[0], model.intercept_[0]
        intercept[seen[0]] = 0.0
    else:
        coef[seen], intercept[seen] = model.coef_, model.intercept_
    return coef, intercept, model


def estimate(product: np.ndarray, basket: np.ndarray, label: np.ndarray, n_baskets: int, start: np.ndarray,
             prior: np.ndarray, *, iterations: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Product class posteriors (n_products, K), and the composition model (coef, intercept).

    `product`/`basket` index the lines (all products known), `label` is per basket, `start` the first
    estimate per product and `prior` its prior (both (n_products, K) distributions).
    """
    n_products, k = start.shape
    n = np.bincount(basket, minlength=n_baskets).astype(float)
    used = n > 0
    chunks = [slice(i, i + CHUNK) for i in range(0, product.size, CHUNK)]
    log_prior = np.log(np.maximum(prior, EPS))
    q, coef, intercept, model = start, np.zeros((k, 2 * k)), np.zeros(k), None
    for it in range(iterations):
        counts, log_pure = np.zeros((n_baskets, k)), np.zeros((n_baskets, k))
        for sl in chunks:
            ql = q[product[sl]]
            counts += sum_by_index(basket[sl], ql, n_baskets)
            log_pure += sum_by_index(basket[sl], np.log(np.maximum(ql, EPS)), n_baskets)
        # Inputs only for the sampled baskets: for all of them they would be the largest arrays here.
        sample = _sample(used, seed + it)
        x = composition_inputs(counts[sample] / n[sample][:, None], log_pure[sample])
        coef, intercept, model = _fit_composition(x, label[sample], k, model)
        evidence = log_prior.copy()
        for sl in chunks:
            b, ql = basket[sl], q[product[sl]]
            inv_n = (1.0 / n[b]).astype(np.float32)[:, None, None]
            others_pure = np.exp(log_pure[b] - np.log(np.maximum(ql, EPS)))
            loglik = _label_loglik(counts[b] - ql, others_pure, inv_n, label[b], coef, intercept)
            evidence += sum_by_index(product[sl], loglik, n_products)
        q = np.exp(log_softmax(evidence))
    return q, coef, intercept


def _label_loglik(others: np.ndarray, others_pure: np.ndarray, inv_n: np.ndarray, label: np.ndarray,
                  coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """(n_lines, K): log g(basket label | this line of class z, the other lines as they are), for each z.

    `others` are the other lines' expected class counts and `others_pure` P(all other lines of class k).
    The logits are linear in the shares, so all K candidates come from one broadcast (float32: it is big).
    """
    k = others.shape[1]
    f32 = np.float32
    share_w, pure_w = coef[:, :k].T.astype(f32), coef[:, k:].T.astype(f32)  # [z, y]
    base = (others.astype(f32) * inv_n[:, :, 0]) @ coef[:, :k].T.astype(f32) + intercept.astype(f32)
    # logits[l, z, y] = base[l, y] + share_w[z, y] / n_l + others_pure[l, z] * pure_w[z, y]
    logits = base[:, None, :] + share_w[None] * inv_n + others_pure.astype(f32)[:, :, None] * pure_w[None]
    top = logits.max(axis=2, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=2)) + top[:, :, 0]
    picked = np.take_along_axis(logits, np.broadcast_to(label[:, None, None], (label.size, k, 1)), axis=2)[:, :, 0]
    return (picked - lse).astype(np.float64)
