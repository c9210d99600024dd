"""Learning each product's latent class (EM-style; training side): see `latent.py` for what they are.

The composition model (a multinomial logistic regression, scikit-learn) and the per-product posteriors are
refined in turn; the result is a `LatentTables`, which serving reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .latent import EPS, composition_inputs, log_softmax, sum_by_index

G_SAMPLE = 20_000  # baskets the composition model learns from per iteration (it has 2K² + K parameters)
G_C = 100.0  # weak regularisation: the composition model's boundaries are sharp
CHUNK = 1 << 18  # lines per step of the estimation: bounds its per-line temporaries (~70 MB)


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
