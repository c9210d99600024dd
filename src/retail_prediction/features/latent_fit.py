"""Learning each product's latent class (EM-style; training side): see `latent.py` for what they are.

The composition model (a multinomial logistic regression, scikit-learn) and the per-product posteriors are
refined in turn; the result is a `LatentTables`, which serving reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .latent import EPS, composition_inputs, log_softmax, sum_by_index

G_SAMPLE = 20_000  # baskets the composition model learns from per iteration (it has 2K² + K parameters)
G_C = 100.0  # weak regularisation: the composition model's boundaries are sharp
CHUNK = 1 << 18  # lines per step of the estimation: bounds its per-line temporaries (~70 MB)

Pool = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]  # an ordered map over chunks


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


@dataclass(frozen=True)
class EMChunk:
    """Lines of whole baskets for the estimation: baskets never span chunks, so per-basket arrays exist per
    chunk only and the estimation streams over chunks of any size."""

    product: np.ndarray  # product row of each line (all known)
    basket: np.ndarray  # basket of each line, 0..n_baskets-1 within the chunk
    label: np.ndarray  # class index per basket
    key: np.ndarray  # uint64 per basket: which baskets the composition model samples, whatever the chunking

    @property
    def n_baskets(self) -> int:
        return int(self.label.shape[0])


Chunks = Callable[[], Iterable[EMChunk]]


def mix(key: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uint64 hash of uint64 keys (splitmix64's finaliser): priorities and folds by basket key."""
    with np.errstate(over="ignore"):
        z = key.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _basket_sums(chunk: EMChunk, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per basket of the chunk: lines, expected class counts, and log P(all lines of class k)."""
    nb, k = chunk.n_baskets, q.shape[1]
    n = np.bincount(chunk.basket, minlength=nb).astype(float)
    counts, log_pure = np.zeros((nb, k)), np.zeros((nb, k))
    for sl in _slices(chunk.product.size):
        ql = q[chunk.product[sl]]
        counts += sum_by_index(chunk.basket[sl], ql, nb)
        log_pure += sum_by_index(chunk.basket[sl], np.log(np.maximum(ql, EPS)), nb)
    return n, counts, log_pure


def _slices(n: int) -> list[slice]:
    return [slice(i, i + CHUNK) for i in range(0, n, CHUNK)]


def _sampled_inputs(chunks: Chunks, q: np.ndarray, seed: int, pool: Pool) -> tuple[np.ndarray, np.ndarray]:
    """The composition model's inputs and labels for the G_SAMPLE used baskets of lowest seeded priority,
    in priority order: the same baskets however the lines are chunked."""
    def rows(chunk: EMChunk) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, counts, log_pure = _basket_sums(chunk, q)
        used = np.flatnonzero(n > 0)
        priority = mix(chunk.key[used], seed)
        best = used[np.argsort(priority, kind="stable")[:G_SAMPLE]]
        return (mix(chunk.key[best], seed), composition_inputs(counts[best] / n[best][:, None], log_pure[best]),
                chunk.label[best])

    priority, x, y = np.zeros(0, np.uint64), np.zeros((0, 2 * q.shape[1])), np.zeros(0, np.int64)
    for p, xc, yc in pool(rows, chunks()):
        priority, x, y = np.concatenate([priority, p]), np.concatenate([x, xc]), np.concatenate([y, yc])
        keep = np.argsort(priority, kind="stable")[:G_SAMPLE]
        priority, x, y = priority[keep], x[keep], y[keep]
    return x, y


def estimate_chunks(chunks: Chunks, start: np.ndarray, prior: np.ndarray, *, iterations: int = 2, seed: int = 0,
                    pool: Pool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Product class posteriors (n_products, K), and the composition model (coef, intercept), from the lines
    `chunks()` yields (called once per pass). `start` is the first estimate per product and `prior` its prior
    (both (n_products, K) distributions); `pool` maps a function over the chunks in order (default: serially)."""
    pool = pool or _serial
    n_products, k = start.shape
    log_prior = np.log(np.maximum(prior, EPS))
    q, coef, intercept, model = start, np.zeros((k, 2 * k)), np.zeros(k), None
    for it in range(iterations):
        x, y = _sampled_inputs(chunks, q, seed + it, pool)
        coef, intercept, model = _fit_composition(x, y, k, model)

        def evidence_of(chunk: EMChunk, q: np.ndarray = q, coef: np.ndarray = coef,
                        intercept: np.ndarray = intercept) -> np.ndarray:
            n, counts, log_pure = _basket_sums(chunk, q)
            out = np.zeros((n_products, k))
            for sl in _slices(chunk.product.size):
                b, ql = chunk.basket[sl], q[chunk.product[sl]]
                inv_n = (1.0 / n[b]).astype(np.float32)[:, None, None]
                others_pure = np.exp(log_pure[b] - np.log(np.maximum(ql, EPS)))
                loglik = _label_loglik(counts[b] - ql, others_pure, inv_n, chunk.label[b], coef, intercept)
                out += sum_by_index(chunk.product[sl], loglik, n_products)
            return out

        evidence = log_prior.copy()
        for part in pool(evidence_of, chunks()):
            evidence += part
        q = np.exp(log_softmax(evidence))
    return q, coef, intercept


def estimate(product: np.ndarray, basket: np.ndarray, label: np.ndarray, n_baskets: int, start: np.ndarray,
             prior: np.ndarray, *, iterations: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`estimate_chunks` of lines in memory (one chunk; basket b's key is b)."""
    chunk = EMChunk(product, basket, np.asarray(label), np.arange(n_baskets, dtype=np.uint64))
    return estimate_chunks(lambda: [chunk], start, prior, iterations=iterations, seed=seed)


def _serial(fn: Callable[[EMChunk], Any], chunks: Iterable[EMChunk]) -> Iterator[Any]:
    return map(fn, chunks)


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
