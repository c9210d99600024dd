# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The latent classes' estimation step over one chunk of lines, compiled (training side; see `latent_fit.py`
for what it estimates).

Why compiled: the step touches every training line twice per iteration and builds K x K logits per line;
in NumPy that meant (lines, K, K) temporaries and a dozen passes over them. Here it is two loops over the
lines with no temporaries beyond per-basket sums, in float64, with the GIL released, so chunks run on every
CPU the training may use.
"""

from libc.math cimport exp, log
from libc.stdlib cimport free, malloc


def basket_sums(const int[::1] product, const int[::1] basket, const double[:, ::1] q,
                const double[:, ::1] log_q, double[::1] n, double[:, ::1] counts,
                double[:, ::1] log_pure) -> None:
    """Per basket (adding to the zeroed outputs): its lines, expected class counts (sum of q) and
    log P(all its lines of class k) (sum of log q), over the lines `product[i]` of basket `basket[i]`."""
    cdef Py_ssize_t i, c, p, b, k = q.shape[1], m = product.shape[0]
    with nogil:
        for i in range(m):
            p, b = product[i], basket[i]
            n[b] += 1.0
            for c in range(k):
                counts[b, c] += q[p, c]
                log_pure[b, c] += log_q[p, c]


def evidence(const int[::1] product, const int[::1] basket, const long[::1] label, const double[:, ::1] q,
             const double[:, ::1] log_q, const double[::1] n, const double[:, ::1] counts,
             const double[:, ::1] log_pure, const double[:, ::1] coef, const double[::1] intercept,
             double[:, ::1] out) -> None:
    """Adds to `out[p, z]`, for each line of product p in basket b: log g(label of b | this line of class z,
    the basket's other lines at their current estimates), g the composition model (`coef` (K, 2K),
    `intercept` (K,)) on the class shares of the lines and P(all lines of one class)."""
    cdef Py_ssize_t i, z, y, c, p, b, yb, k = q.shape[1], m = product.shape[0]
    cdef double inv_n, top, total, value
    cdef double* base
    cdef double* logit
    cdef double* pure
    if m == 0:
        return
    base = <double*> malloc(3 * k * sizeof(double))
    if base == NULL:
        raise MemoryError()
    logit, pure = base + k, base + 2 * k
    with nogil:
        for i in range(m):
            p, b = product[i], basket[i]
            yb = label[b]
            inv_n = 1.0 / n[b]
            for z in range(k):
                pure[z] = exp(log_pure[b, z] - log_q[p, z])  # P(all *other* lines of class z)
            for y in range(k):  # the logits with this line left out: the other lines' shares
                value = intercept[y]
                for c in range(k):
                    value += (counts[b, c] - q[p, c]) * inv_n * coef[y, c]
                base[y] = value
            for z in range(k):  # this line of class z adds 1/n to share z; the others must all be z
                top = -1e300
                for y in range(k):
                    logit[y] = base[y] + coef[y, z] * inv_n + pure[z] * coef[y, k + z]
                    if logit[y] > top:
                        top = logit[y]
                total = 0.0
                for y in range(k):
                    total += exp(logit[y] - top)
                out[p, z] += logit[yb] - top - log(total)
    free(base)
