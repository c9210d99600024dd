# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The latent classes' estimation step over one chunk of lines, compiled (training side; see `latent_fit.py`
for what it estimates).

Why compiled: the step touches every training line twice per iteration and builds K x K logits per line;
in NumPy that meant (lines, K, K) temporaries and a dozen passes over them. Here it is two loops over the
lines with no temporaries beyond per-basket sums, in float64, with the GIL released, so chunks run on every
CPU the training may use.
"""

from libc.math cimport exp, fabs, log
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


cdef double SAFE_COEF = 300.0  # |coef| bound of the factored form: e^(2 x 300) stays far from overflow


def evidence(const int[::1] product, const int[::1] basket, const long[::1] label, const double[:, ::1] q,
             const double[:, ::1] log_q, const double[::1] n, const double[:, ::1] counts,
             const double[:, ::1] log_pure, const double[:, ::1] coef, const double[::1] intercept,
             double eps, double[:, ::1] out) -> None:
    """Adds to `out[p, z]`, for each line of product p in basket b: log g(label of b | this line of class z,
    the basket's other lines at their current estimates), g the composition model (`coef` (K, 2K),
    `intercept` (K,)) on the class shares of the lines and P(all lines of one class); `log_q` is
    log(max(q, eps)).

    The logit of class y is base[y] + coef[y, z] / n + pure[z] coef[y, K + z] (base: the other lines'
    shares), so exp of it factors into exp(base[y]) (K exps per line), exp(coef[y, z] / n) (per basket) and
    exp(pure[z] coef[y, K + z]), which is 1 + x + x^2/2 to double precision for the tiny x of most lines.
    """
    cdef Py_ssize_t i, z, y, c, p, b, yb, last = -1, k = q.shape[1], m = product.shape[0]
    cdef double inv_n = 0.0, top, total, x, e, largest = 0.0
    cdef double* buffer
    cdef double* base
    cdef double* eb
    cdef double* basket_base
    cdef double* basket_pure
    cdef double* by_n  # exp(coef[y, z] / n), [y * k + z]
    cdef double* share_coef  # per product: sum_c q[p, c] coef[y, c], [p * k + y]
    cdef Py_ssize_t n_products = q.shape[0]
    if m == 0:
        return
    for y in range(k):
        for c in range(2 * k):
            largest = max(largest, fabs(coef[y, c]))
    buffer = <double*> malloc((4 * k + k * k + n_products * k) * sizeof(double))
    if buffer == NULL:
        raise MemoryError()
    base, eb, basket_base = buffer, buffer + k, buffer + 2 * k
    basket_pure, by_n, share_coef = buffer + 3 * k, buffer + 4 * k, buffer + 4 * k + k * k
    with nogil:
        for p in range(n_products):
            for y in range(k):
                x = 0.0
                for c in range(k):
                    x += q[p, c] * coef[y, c]
                share_coef[p * k + y] = x
        for i in range(m):
            p, b = product[i], basket[i]
            yb = label[b]
            if b != last:  # a new basket (lines of one basket are usually together; any order is right)
                last, inv_n = b, 1.0 / n[b]
                for y in range(k):
                    x = intercept[y]
                    for c in range(k):
                        x += counts[b, c] * inv_n * coef[y, c]
                    basket_base[y] = x
                    basket_pure[y] = exp(log_pure[b, y])  # P(all lines of class y)
                    for z in range(k):
                        by_n[y * k + z] = exp(coef[y, z] * inv_n)
            top = -1e300
            for y in range(k):  # the logits with this line left out
                base[y] = basket_base[y] - inv_n * share_coef[p * k + y]
                top = max(top, base[y])
            if largest > SAFE_COEF:
                _direct(base, &coef[0, 0], inv_n, &log_pure[b, 0], &log_q[p, 0], yb, k, &out[p, 0])
                continue
            for y in range(k):
                eb[y] = exp(base[y] - top)
            for z in range(k):
                e = basket_pure[z] / max(q[p, z], eps)  # P(all *other* lines of class z)
                total = 0.0
                for y in range(k):
                    x = e * coef[y, k + z]
                    if -1e-5 < x < 1e-5:
                        total += eb[y] * by_n[y * k + z] * (1.0 + x + 0.5 * x * x)
                    else:
                        total += eb[y] * by_n[y * k + z] * exp(x)
                out[p, z] += (base[yb] - top) + coef[yb, z] * inv_n + e * coef[yb, k + z] - log(total)
    free(buffer)


cdef void _direct(const double* base, const double* coef, double inv_n, const double* log_pure,
                  const double* log_q, Py_ssize_t yb, Py_ssize_t k, double* out) noexcept nogil:
    """The same sum for one line, each logit's exp taken whole (any coefficients)."""
    cdef Py_ssize_t z, y
    cdef double pure, top, total, logit_yb, value
    for z in range(k):
        pure = exp(log_pure[z] - log_q[z])
        top = -1e300
        for y in range(k):
            top = max(top, base[y] + coef[y * 2 * k + z] * inv_n + pure * coef[y * 2 * k + k + z])
        total, logit_yb = 0.0, 0.0
        for y in range(k):
            value = base[y] + coef[y * 2 * k + z] * inv_n + pure * coef[y * 2 * k + k + z]
            total += exp(value - top)
            if y == yb:
                logit_yb = value
        out[z] += logit_yb - top - log(total)
