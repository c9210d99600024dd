"""Learning each product's latent class (EM-style; training side): see `latent.py` for what they are.

The composition model (a multinomial logistic regression, scikit-learn) and the per-product posteriors are
refined in turn; the result is a `LatentTables`, which serving reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import latent_em
from .latent import EPS, composition_inputs, log_softmax

G_SAMPLE = 20_000  # baskets the composition model learns from per iteration (it has 2K² + K parameters)
G_C = 100.0  # weak regularisation: the composition model's boundaries are sharp

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

    def __post_init__(self) -> None:  # what the compiled step takes (no copy when they already are)
        object.__setattr__(self, "product", np.ascontiguousarray(self.product, dtype=np.int32))
        object.__setattr__(self, "basket", np.ascontiguousarray(self.basket, dtype=np.int32))
        object.__setattr__(self, "label", np.ascontiguousarray(self.label, dtype=np.int64))

    @property
    def n_baskets(self) -> int:
        return int(self.label.shape[0])


Chunks = Callable[[], Iterable[Callable[[], EMChunk]]]  # a pass: one loader per chunk, run on the pool's threads


def mix(key: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uint64 hash of uint64 keys (splitmix64's finaliser): priorities and folds by basket key."""
    with np.errstate(over="ignore"):
        z = key.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _sums(chunk: EMChunk, q: np.ndarray, log_q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per basket of the chunk: lines, expected class counts, and log P(all lines of class k)."""
    nb, k = chunk.n_baskets, q.shape[1]
    n, counts, log_pure = np.zeros(nb), np.zeros((nb, k)), np.zeros((nb, k))
    latent_em.basket_sums(chunk.product, chunk.basket, q, log_q, n, counts, log_pure)
    return n, counts, log_pure


def _subset(chunk: EMChunk, baskets: np.ndarray) -> EMChunk:
    """The lines of `baskets` (chunk basket numbers), renumbered by their position in `baskets`."""
    position = np.full(chunk.n_baskets, -1, dtype=np.int32)
    position[baskets] = np.arange(baskets.size, dtype=np.int32)
    lines = position[chunk.basket] >= 0
    return EMChunk(chunk.product[lines], position[chunk.basket[lines]], chunk.label[baskets], chunk.key[baskets])


def _joined(a: EMChunk, b: EMChunk) -> EMChunk:
    return EMChunk(np.concatenate([a.product, b.product]), np.concatenate([a.basket, b.basket + a.n_baskets]),
                   np.concatenate([a.label, b.label]), np.concatenate([a.key, b.key]))


def _lowest(priority: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k lowest priorities, in (priority, position) order: a partition, then a sort of k."""
    if priority.size > k:
        best = np.argpartition(priority, k - 1)[:k]
        return best[np.lexsort((best, priority[best]))]
    return np.argsort(priority, kind="stable")


Sample = tuple[np.ndarray, EMChunk]  # priorities of the sampled baskets, in order, and their lines


def _samples(chunks: Chunks, seeds: list[int], pool: Pool) -> list[EMChunk]:
    """Per seed, the lines of the G_SAMPLE used baskets of lowest seeded priority (in that order): the
    composition model's baskets, the same however the lines are chunked. One pass for all the iterations;
    the samples are small enough to keep (G_SAMPLE baskets each)."""
    def best(load: Callable[[], EMChunk]) -> list[Sample]:
        chunk = load()
        used = np.flatnonzero(np.bincount(chunk.basket, minlength=chunk.n_baskets))
        out = []
        for seed in seeds:
            priority = mix(chunk.key[used], seed)
            order = _lowest(priority, G_SAMPLE)
            out.append((priority[order], _subset(chunk, used[order])))
        return out

    empty = EMChunk(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.uint64))
    kept: list[Sample] = [(np.zeros(0, np.uint64), empty) for _ in seeds]
    for parts in pool(best, chunks()):
        merged = []
        for (pa, a), (pb, b) in zip(kept, parts, strict=True):
            priority = np.concatenate([pa, pb])
            order = _lowest(priority, G_SAMPLE)
            merged.append((priority[order], _subset(_joined(a, b), order)))
        kept = merged
    return [chunk for _, chunk in kept]


def estimate_chunks(chunks: Chunks, start: np.ndarray, prior: np.ndarray, *, iterations: int = 2, seed: int = 0,
                    pool: Pool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Product class posteriors (n_products, K), and the composition model (coef, intercept), from the lines
    `chunks()` yields (called once per pass: one for the samples, then one per iteration). `start` is the
    first estimate per product and `prior` its prior (both (n_products, K) distributions); `pool` maps a
    function over the chunks in order (default: serially)."""
    pool = pool or _serial
    n_products, k = start.shape
    log_prior = np.log(np.maximum(prior, EPS))
    q, coef, intercept, model = start, np.zeros((k, 2 * k)), np.zeros(k), None
    samples = _samples(chunks, [seed + it for it in range(iterations)], pool)
    for sample in samples:
        q = np.ascontiguousarray(q, dtype=np.float64)
        log_q = np.log(np.maximum(q, EPS))
        n, counts, log_pure = _sums(sample, q, log_q)
        x = composition_inputs(counts / n[:, None], log_pure)
        coef, intercept, model = _fit_composition(x, sample.label, k, model)

        def evidence_of(load: Callable[[], EMChunk], q: np.ndarray = q, log_q: np.ndarray = log_q,
                        coef: np.ndarray = coef, intercept: np.ndarray = intercept) -> np.ndarray:
            chunk, out = load(), np.zeros((n_products, k))
            latent_em.evidence(chunk.product, chunk.basket, chunk.label, q, log_q, *_sums(chunk, q, log_q), coef,
                               intercept, EPS, out)
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
    return estimate_chunks(lambda: [lambda: chunk], start, prior, iterations=iterations, seed=seed)


def _serial(fn: Callable[[Any], Any], chunks: Iterable[Any]) -> Iterator[Any]:
    return map(fn, chunks)
