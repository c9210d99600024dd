# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# kernel.pyx's declarations, for the modules that cimport it (explain_kernel.pyx): the tables the loops read,
# the line sink of client baskets, and the per-line pieces (`_line_q` is kernel's alone). The inline functions
# are defined here, not in kernel.pyx, so that every module compiles them inline (a cimported cdef function is
# otherwise a call through a pointer); the directives above are kernel.pyx's, for their code.

from libc.math cimport log1p


cdef struct _Tables:
    # Pointers into KernelTables' arrays (valid while it lives): what the nogil loops read.
    const double* edges
    Py_ssize_t n_edges, k
    const double* counts
    const double* totals
    const long long* offsets
    const double* prior
    const double* posterior
    const double* product_lines
    const double* lat_counts
    const double* lat_totals
    const long long* lat_offsets
    const double* lat_mean
    double strength, eps


cdef class KernelTables:
    cdef const double[::1] edges
    cdef const double[:, ::1] counts
    cdef const double[::1] totals
    cdef const long long[::1] offsets
    cdef const double[::1] prior
    cdef const double[:, ::1] posterior
    cdef const double[::1] product_lines
    cdef const double[:, ::1] lat_counts
    cdef const double[::1] lat_totals
    cdef const long long[::1] lat_offsets
    cdef const double[::1] lat_mean
    cdef _Tables c


cdef class _LineSink:
    cdef int* basket
    cdef double* quantity
    cdef double* spend
    cdef int* rows  # (levels, n) row-major
    cdef unsigned char* named
    cdef Py_ssize_t n, i
    cdef dict products
    cdef list tables
    cdef tuple fields

    cdef void add(self, Py_ssize_t b, object product, object line) except *


cdef _LineSink _sink(tuple hierarchy_fields, list row_of, Py_ssize_t n)
cdef void _fill_into(_LineSink sink, list baskets, int* ints, double* doubles, unsigned char* named) except *


cdef inline void _pull(double* p, const double* counts, double total, double strength, Py_ssize_t k) noexcept nogil:
    """One Bayesian update of the distribution `p` by a code's class counts: p <- (c + m p) / (t + m)."""
    cdef double denom = total + strength
    cdef Py_ssize_t c
    for c in range(k):
        p[c] = (counts[c] + strength * p[c]) / denom


cdef inline Py_ssize_t _argmax(const double* p, Py_ssize_t k) noexcept nogil:
    """The first largest entry, as NumPy's argmax."""
    cdef Py_ssize_t c, best = 0
    for c in range(1, k):
        if p[c] > p[best]:
            best = c
    return best


cdef inline double _log_price(double spend, double quantity) noexcept nogil:
    """The log unit price: what a line's price band and the basket's price level are computed from."""
    return log1p(spend / quantity)


cdef inline Py_ssize_t _band(double log_price, const double* edges, Py_ssize_t n_edges) noexcept nogil:
    """The price band: how many band edges lie below the price (NumPy's searchsorted, NaN in the last band)."""
    cdef Py_ssize_t lo = 0, hi = n_edges, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if not edges[mid] >= log_price:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef inline double _line_p(Py_ssize_t i, const int* rows, Py_ssize_t n, Py_ssize_t levels, Py_ssize_t band,
                           const double* counts, const double* totals, const long long* offsets,
                           const double* prior, double strength, Py_ssize_t k, double* p) noexcept nogil:
    """Line i's class distribution into `p`: the prior pulled by its price band, then by every level it has a
    known code at, coarsest first and the product last. Returns the product's evidence (0 if unknown).

    `rows` is (levels, n), products first; table j of the stacked `counts` starts at row offsets[j]: the
    price bands, then the levels coarsest first."""
    cdef Py_ssize_t c, j, row
    cdef int r
    cdef double evidence = 0.0
    for c in range(k):
        p[c] = prior[c]
    row = offsets[0] + band
    _pull(p, counts + row * k, totals[row], strength, k)
    for j in range(1, levels + 1):
        r = rows[(levels - j) * n + i]
        if r >= 0:
            row = offsets[j] + r
            _pull(p, counts + row * k, totals[row], strength, k)
            if j == levels:
                evidence = totals[row]
    return evidence


cdef inline const double* _line_q(Py_ssize_t i, const int* rows, Py_ssize_t n, Py_ssize_t levels,
                                  const double* posterior, const double* product_lines, const double* lat_counts,
                                  const double* lat_totals, const long long* lat_offsets, const double* lat_mean,
                                  double strength, Py_ssize_t k, double* fallback) noexcept nogil:
    """Line i's latent class distribution: its product's posterior if the product was seen in training, else
    the mean posterior pulled by the hierarchy codes it has, coarsest first (written into `fallback`)."""
    cdef Py_ssize_t c, j, row
    cdef int r = rows[i]
    if r >= 0 and product_lines[r] > 0:
        return posterior + r * k
    for c in range(k):
        fallback[c] = lat_mean[c]
    for j in range(levels - 1):
        r = rows[(levels - 1 - j) * n + i]
        if r >= 0:
            row = lat_offsets[j] + r
            _pull(fallback, lat_counts + row * k, lat_totals[row], strength, k)
    return fallback
