# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The featurization's per-line and per-basket loops, compiled (see `tables.py` for what they compute).

Why compiled: one API request is a basket of a few lines, where NumPy spends its time in per-call
overheads (about a hundred calls on arrays of a few elements), not in arithmetic. These loops make one
pass over the lines and one over the baskets, with no temporaries, so the same code is cheap for one
basket and for ten million, and training and serving still share every line of it. The GIL is released
while they run.

Layout of the per-basket sums (`sums`, one row per basket): SUMMED_PER_CLASS blocks of K columns (line
probability, by spend, votes, votes by spend; latent class probability, its log, latent votes), then
N_STATS basket statistics (lines, spend, quantity, log unit price, unseen products, lines without a known
hierarchy code, log evidence). The feature row (`basket_rows`) holds OUT_PER_CLASS blocks of K columns,
then the statistics: the order of `FeatureTables.feature_names()`.
"""

from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.math cimport exp, log, log1p
from libc.stdlib cimport calloc, free, malloc

# Per-class blocks of the sums, then the statistics after them.
cdef enum:
    P, P_SPEND, VOTE, VOTE_SPEND, Q, LOG_Q, Q_VOTE, _SUMMED_PER_CLASS
cdef enum:
    COUNT, SPEND, QUANTITY, LOG_PRICE, UNSEEN, NO_HIERARCHY, LOG_EVIDENCE, _N_STATS
# The feature row's per-class blocks after the four means of P..VOTE_SPEND: the largest line probability,
# the composition model's inputs (latent class shares, P(all lines of a class)), its label probabilities,
# and the latent votes; the statistics follow.
cdef enum:
    O_P_MAX = 4, O_SHARE, O_PURE, O_G_PROB, O_Q_VOTE, _OUT_PER_CLASS

SUMMED_PER_CLASS = _SUMMED_PER_CLASS
N_STATS = _N_STATS
OUT_PER_CLASS = _OUT_PER_CLASS
cdef double SPEND_FLOOR = 1e-9  # spend weights get a floor so a basket of zero-spend lines falls back to line weights


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


def log_prices(const double[:] spend, const double[:] quantity, double[::1] out):
    """Every line's log unit price (`out`)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(out.shape[0]):
            out[i] = _log_price(spend[i], quantity[i])


def price_bands(const double[::1] log_price, const double[::1] edges, int[::1] out):
    """Every line's price band (`out`) given the inner band edges (sorted)."""
    cdef Py_ssize_t i, n_edges = edges.shape[0]
    with nogil:
        for i in range(out.shape[0]):
            out[i] = _band(log_price[i], &edges[0] if n_edges else NULL, n_edges)


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


def line_distributions(const int[:, ::1] level_rows, const double[:] spend, const double[:] quantity,
                       const double[::1] edges, const double[:, ::1] counts, const double[::1] totals,
                       const long long[::1] offsets, const double[::1] prior, double strength,
                       double[:, ::1] p_out, double[::1] evidence_out):
    """Every line's class distribution (`p_out`, lines x K) and product evidence (`evidence_out`)."""
    cdef Py_ssize_t levels = level_rows.shape[0], n = level_rows.shape[1], k = prior.shape[0], i, band
    cdef Py_ssize_t n_edges = edges.shape[0]
    cdef const double* edge0 = &edges[0] if n_edges else NULL
    if n == 0:
        return
    with nogil:
        for i in range(n):
            band = _band(_log_price(spend[i], quantity[i]), edge0, n_edges)
            evidence_out[i] = _line_p(i, &level_rows[0, 0], n, levels, band, &counts[0, 0], &totals[0],
                                      &offsets[0], &prior[0], strength, k, &p_out[i, 0])


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
    """What the per-line loop reads of the learned tables (the smoothing chain's counts, the latent classes),
    checked once when built (a model keeps one for its lifetime) rather than on every call."""
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

    def __init__(self, const double[::1] edges, const double[:, ::1] counts, const double[::1] totals,
                 const long long[::1] offsets, const double[::1] prior, const double[:, ::1] posterior,
                 const double[::1] product_lines, const double[:, ::1] lat_counts, const double[::1] lat_totals,
                 const long long[::1] lat_offsets, const double[::1] lat_mean, double strength, double eps):
        if posterior.shape[0] != product_lines.shape[0] or prior.shape[0] == 0:
            raise ValueError("inconsistent tables")
        self.edges, self.counts, self.totals, self.offsets, self.prior = edges, counts, totals, offsets, prior
        self.posterior, self.product_lines, self.lat_counts = posterior, product_lines, lat_counts
        self.lat_totals, self.lat_offsets, self.lat_mean = lat_totals, lat_offsets, lat_mean
        self.c.n_edges, self.c.k, self.c.strength, self.c.eps = edges.shape[0], prior.shape[0], strength, eps
        self.c.edges = &edges[0] if edges.shape[0] else NULL
        self.c.counts, self.c.totals, self.c.offsets, self.c.prior = &counts[0, 0], &totals[0], &offsets[0], &prior[0]
        self.c.posterior = &posterior[0, 0] if posterior.shape[0] else NULL
        self.c.product_lines = &product_lines[0] if product_lines.shape[0] else NULL
        self.c.lat_counts = &lat_counts[0, 0] if lat_counts.shape[0] else NULL
        self.c.lat_totals = &lat_totals[0] if lat_totals.shape[0] else NULL
        self.c.lat_offsets, self.c.lat_mean = &lat_offsets[0], &lat_mean[0]


cdef void _add_lines(const int* rows, Py_ssize_t n, Py_ssize_t levels, const double* spend, const double* quantity,
                     const int* basket, const _Tables* t, double* sums, double* p_max, double* p) noexcept nogil:
    """Adds lines 0..n-1 (code rows (levels, n), products first) to their baskets' rows of `sums` and `p_max`
    (row widths SUMMED_PER_CLASS * K + N_STATS and K), in line order; `p` is scratch of 2 K doubles."""
    cdef Py_ssize_t k = t.k, width = _SUMMED_PER_CLASS * k + _N_STATS, s0 = _SUMMED_PER_CLASS * k, i, c, j
    cdef double* fallback = p + k
    cdef const double* q
    cdef double* s
    cdef double* pm
    cdef double w, evidence, log_price
    cdef int no_hierarchy
    for i in range(n):
        s, pm = sums + basket[i] * width, p_max + basket[i] * k
        log_price = _log_price(spend[i], quantity[i])
        evidence = _line_p(i, rows, n, levels, _band(log_price, t.edges, t.n_edges), t.counts, t.totals, t.offsets,
                           t.prior, t.strength, k, p)
        q = _line_q(i, rows, n, levels, t.posterior, t.product_lines, t.lat_counts, t.lat_totals, t.lat_offsets,
                    t.lat_mean, t.strength, k, fallback)
        w = spend[i] + SPEND_FLOOR
        for c in range(k):
            s[P * k + c] += p[c]
            s[P_SPEND * k + c] += p[c] * w
            s[Q * k + c] += q[c]
            s[LOG_Q * k + c] += log(q[c] if q[c] > t.eps else t.eps)
            if p[c] > pm[c]:
                pm[c] = p[c]
        c = _argmax(p, k)
        s[VOTE * k + c] += 1.0
        s[VOTE_SPEND * k + c] += w
        s[Q_VOTE * k + _argmax(q, k)] += 1.0
        no_hierarchy = 1
        for j in range(1, levels):
            if rows[j * n + i] >= 0:
                no_hierarchy = 0
        s[s0 + COUNT] += 1.0
        s[s0 + SPEND] += spend[i]
        s[s0 + QUANTITY] += quantity[i]
        s[s0 + LOG_PRICE] += log_price
        s[s0 + UNSEEN] += rows[i] < 0
        s[s0 + NO_HIERARCHY] += no_hierarchy
        s[s0 + LOG_EVIDENCE] += log1p(evidence)


def add_lines(const int[:, ::1] level_rows, const double[::1] spend, const double[::1] quantity,
              const int[::1] basket, KernelTables t, double[:, ::1] sums, double[:, ::1] p_max):
    """Adds every line to its basket's row of `sums` and `p_max` (baskets x K), in line order."""
    cdef Py_ssize_t n = level_rows.shape[1], k = t.c.k
    cdef double* p
    if sums.shape[1] != _SUMMED_PER_CLASS * k + _N_STATS or p_max.shape[1] != k or p_max.shape[0] != sums.shape[0]:
        raise ValueError("sums and p_max must be (baskets, SUMMED_PER_CLASS * K + N_STATS) and (baskets, K)")
    if spend.shape[0] != n or quantity.shape[0] != n or basket.shape[0] != n:
        raise ValueError("one spend, quantity and basket per line")
    if n == 0:
        return
    p = <double*> malloc(2 * k * sizeof(double))
    if p == NULL:
        raise MemoryError()
    with nogil:
        _add_lines(&level_rows[0, 0], n, level_rows.shape[0], &spend[0], &quantity[0], &basket[0], &t.c,
                   &sums[0, 0], &p_max[0, 0], p)
    free(p)


cdef void _basket_rows(const double* sums, const double* p_max, Py_ssize_t n, Py_ssize_t k, const double* coef,
                       const double* intercept, const int* model_of, float* out, double* g) noexcept nogil:
    """The feature rows of baskets 0..n-1 (see `basket_rows`); `model_of` NULL = model 0 for all; `g` is scratch
    of 3 K doubles."""
    cdef Py_ssize_t s0 = _SUMMED_PER_CLASS * k, width = s0 + _N_STATS, out_width = _OUT_PER_CLASS * k + _N_STATS
    cdef Py_ssize_t b, c, j, m
    cdef const double* s
    cdef const double* w
    cdef float* o
    cdef double* z = g + 2 * k
    cdef double count, by_line, by_spend, top, total
    for b in range(n):
        s, o = sums + b * width, out + b * out_width
        m = model_of[b] if model_of != NULL else 0
        count = s[s0 + COUNT]
        by_line = count if count > 1.0 else 1.0
        by_spend = s[s0 + SPEND] + SPEND_FLOOR * count
        if not by_spend > 0:
            by_spend = 1.0
        for c in range(k):
            o[P * k + c] = s[P * k + c] / by_line
            o[P_SPEND * k + c] = s[P_SPEND * k + c] / by_spend
            o[VOTE * k + c] = s[VOTE * k + c] / by_line
            o[VOTE_SPEND * k + c] = s[VOTE_SPEND * k + c] / by_spend
            o[O_P_MAX * k + c] = p_max[b * k + c]
            g[c] = s[Q * k + c] / by_line
            g[k + c] = exp(s[LOG_Q * k + c])
            o[O_SHARE * k + c] = g[c]
            o[O_PURE * k + c] = g[k + c]
            o[O_Q_VOTE * k + c] = s[Q_VOTE * k + c] / by_line
        top = -1e300
        for c in range(k):
            w = coef + (m * k + c) * 2 * k
            z[c] = intercept[m * k + c]
            for j in range(2 * k):
                z[c] += w[j] * g[j]
            if z[c] > top:
                top = z[c]
        total = 0.0
        for c in range(k):
            total += exp(z[c] - top)
        for c in range(k):
            o[O_G_PROB * k + c] = exp(z[c] - top - log(total))
        o[_OUT_PER_CLASS * k + COUNT] = count
        o[_OUT_PER_CLASS * k + SPEND] = log1p(s[s0 + SPEND])
        o[_OUT_PER_CLASS * k + QUANTITY] = log1p(s[s0 + QUANTITY])
        for j in range(<int> LOG_PRICE, <int> _N_STATS):
            o[_OUT_PER_CLASS * k + j] = s[s0 + j] / by_line


def basket_rows(const double[:, ::1] sums, const double[:, ::1] p_max, const double[:, :, ::1] coef,
                const double[:, ::1] intercept, const int[::1] model_of, float[:, ::1] out):
    """The feature row of every basket from its sums; basket b's label probabilities come from composition
    model `model_of[b]` (`coef[m]` is K x 2K, on the latent class shares then P(all lines of a class))."""
    cdef Py_ssize_t n = sums.shape[0], k = p_max.shape[1], b
    cdef double* g
    if (sums.shape[1] != _SUMMED_PER_CLASS * k + _N_STATS or out.shape[1] != _OUT_PER_CLASS * k + _N_STATS
            or coef.shape[1] != k or coef.shape[2] != 2 * k or intercept.shape[0] != coef.shape[0]
            or intercept.shape[1] != k or p_max.shape[0] != n or out.shape[0] != n or model_of.shape[0] != n):
        raise ValueError("sums, p_max, coef, intercept, model_of and out do not fit together")
    for b in range(n):
        if not 0 <= model_of[b] < coef.shape[0]:
            raise ValueError("model_of names a composition model that is not there")
    if n == 0:
        return
    g = <double*> malloc(3 * k * sizeof(double))
    if g == NULL:
        raise MemoryError()
    with nogil:
        _basket_rows(&sums[0, 0], &p_max[0, 0], n, k, &coef[0, 0, 0], &intercept[0, 0], &model_of[0], &out[0, 0], g)
    free(g)


cdef void _unknown_codes(const int* rows, Py_ssize_t n, Py_ssize_t levels, const int* basket,
                         const unsigned char* named, long long* out) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef bint known
    for i in range(n):
        if rows[i] < 0:
            out[basket[i] * 2] += 1
        known = False
        for j in range(1, levels):
            if rows[j * n + i] >= 0:
                known = True
        if named[i] and not known:
            out[basket[i] * 2 + 1] += 1


def unknown_codes(const int[:, ::1] level_rows, const int[::1] basket, const unsigned char[::1] named,
                  long long[:, ::1] out):
    """Per basket, what the tables do not know (reported beside a prediction, not a feature): lines whose
    product is unknown (out[b, 0]), and lines that name a hierarchy code or category (`named`) that no
    hierarchy level knows (out[b, 1])."""
    cdef Py_ssize_t n = level_rows.shape[1]
    if basket.shape[0] != n or named.shape[0] != n or out.shape[1] != 2:
        raise ValueError("one basket and one `named` per line; out is (baskets, 2)")
    if n == 0:
        return
    with nogil:
        _unknown_codes(&level_rows[0, 0], n, level_rows.shape[0], &basket[0], &named[0], &out[0, 0])


cdef inline int _row(dict table, object code):
    """The code's row in a level's table (a dict code -> row), -1 when it is missing ('' or None) or unknown."""
    cdef PyObject* hit
    if not code:
        return -1
    hit = PyDict_GetItem(table, code)
    return -1 if hit is NULL else <int> <object> hit


cdef class _LineSink:
    """Where `client_lines` writes, as raw pointers (the output arrays of the line table)."""
    cdef int* basket
    cdef double* quantity
    cdef double* spend
    cdef int* rows  # (levels, n) row-major
    cdef unsigned char* named
    cdef Py_ssize_t n, i
    cdef dict products
    cdef list tables
    cdef tuple fields

    cdef void add(self, Py_ssize_t b, object product, object line) except *:
        cdef Py_ssize_t i = self.i, j
        cdef double q = line.quantity
        cdef object category = line.category, code
        cdef bint any_named = False
        self.basket[i] = <int> b
        self.quantity[i] = q
        self.spend[i] = q * <double> line.price
        self.rows[i] = _row(self.products, product)
        for j in range(len(self.fields)):
            code = getattr(line, <str> self.fields[j]) or category
            if code:
                any_named = True
            self.rows[(j + 1) * self.n + i] = _row(<dict> self.tables[j], code)
        self.named[i] = any_named
        self.i = i + 1


cdef void _fill(_LineSink sink, list baskets) except *:
    cdef Py_ssize_t b
    for b in range(len(baskets)):
        items = baskets[b]
        if type(items) is dict:
            for product, line in (<dict> items).items():
                if sink.i == sink.n:
                    raise ValueError("more lines than the arrays hold")
                sink.add(b, product, line)
        else:
            for line in items:
                if sink.i == sink.n:
                    raise ValueError("more lines than the arrays hold")
                sink.add(b, line.product_id, line)
    if sink.i != sink.n:
        raise ValueError("fewer lines than the arrays hold")


cdef _LineSink _sink(tuple hierarchy_fields, list row_of, Py_ssize_t n):
    if len(hierarchy_fields) != len(row_of) - 1:
        raise ValueError("one table per level and one field per hierarchy level are needed")
    cdef _LineSink sink = _LineSink()
    sink.n, sink.i = n, 0
    sink.products, sink.tables, sink.fields = row_of[0], row_of[1:], hierarchy_fields
    return sink


cdef void _fill_into(_LineSink sink, list baskets, int* ints, double* doubles, unsigned char* named) except *:
    """Fills malloc'ed line arrays from client baskets: basket, then the code rows, in `ints`; quantity, then spend,
    in `doubles`; `named`. MemoryError if an allocation failed (a NULL)."""
    if ints == NULL or doubles == NULL or named == NULL:
        raise MemoryError()
    sink.basket, sink.rows, sink.quantity, sink.spend, sink.named = ints, ints + sink.n, doubles, doubles + sink.n, named
    _fill(sink, baskets)


def client_lines(list baskets, tuple hierarchy_fields, list row_of, int[::1] basket, double[::1] quantity,
                 double[::1] spend, int[:, ::1] level_rows, unsigned char[::1] named):
    """Client baskets -> the line table the loops above take, looking each code up as it goes.

    A basket is a dict (product code -> line) or a list of lines with a `product_id`; a line has `quantity`,
    `price` (unit price), `category` and one attribute per hierarchy level (`hierarchy_fields`, finest
    first), each a string or None. `row_of` holds one dict code -> row per level, products first. A
    missing hierarchy code falls back to the line's category, so the learned vocabularies decide where (if
    anywhere) a free-form category is known. Fills, per line: its basket, quantity, spend (quantity x unit
    price), row at every level (-1 = missing or unknown) and whether it names a code or category (`named`).
    The caller sizes the arrays to the total number of lines.
    """
    cdef Py_ssize_t n = basket.shape[0]
    cdef _LineSink sink = _sink(hierarchy_fields, row_of, n)
    if level_rows.shape[0] != len(row_of) or level_rows.shape[1] != n or quantity.shape[0] != n \
            or spend.shape[0] != n or named.shape[0] != n:
        raise ValueError("the arrays must hold one entry per line (and one row per level)")
    if n == 0:
        _fill(sink, baskets)
        return
    sink.basket, sink.quantity, sink.spend, sink.named = &basket[0], &quantity[0], &spend[0], &named[0]
    sink.rows = &level_rows[0, 0]
    _fill(sink, baskets)


def client_features(list baskets, tuple hierarchy_fields, list row_of, KernelTables t,
                    const double[:, :, ::1] coef, const double[:, ::1] intercept, float[:, ::1] out,
                    long long[:, ::1] unknown):
    """Client baskets straight to their feature rows (`out`) and unknown-code counts (`unknown`, as
    `unknown_codes`): `client_lines`, `add_lines`, `basket_rows` (composition model 0) and `unknown_codes`
    in one call, on malloc'ed line arrays. The API's path: a request's fixed cost is one call, not a dozen
    NumPy arrays and calls, which measured 3x dearer in the server (cold caches) than in a loop."""
    cdef Py_ssize_t nb = len(baskets), n = 0, levels = len(row_of), k = t.c.k, b
    cdef Py_ssize_t width = _SUMMED_PER_CLASS * k + _N_STATS
    cdef int* ints = NULL
    cdef double* doubles = NULL
    cdef unsigned char* named = NULL
    cdef _LineSink sink
    if (out.shape[0] != nb or out.shape[1] != _OUT_PER_CLASS * k + _N_STATS or unknown.shape[0] != nb
            or unknown.shape[1] != 2 or coef.shape[0] < 1 or coef.shape[1] != k or coef.shape[2] != 2 * k
            or intercept.shape[0] < 1 or intercept.shape[1] != k):
        raise ValueError("out, unknown, coef and intercept do not fit the baskets and the tables")
    for b in range(nb):
        n += len(baskets[b])
    sink = _sink(hierarchy_fields, row_of, n)
    unknown[:, :] = 0
    if nb == 0:
        return
    ints = <int*> malloc((1 + levels) * n * sizeof(int) + 1)
    doubles = <double*> calloc(2 * n + nb * (width + k) + 5 * k, sizeof(double))
    named = <unsigned char*> malloc(n + 1)
    try:
        _fill_into(sink, baskets, ints, doubles, named)
        with nogil:
            _add_lines(ints + n, n, levels, doubles + n, doubles, ints, &t.c, doubles + 2 * n,
                       doubles + 2 * n + nb * width, doubles + 2 * n + nb * (width + k))
            _basket_rows(doubles + 2 * n, doubles + 2 * n + nb * width, nb, k, &coef[0, 0, 0], &intercept[0, 0], NULL,
                         &out[0, 0], doubles + 2 * n + nb * (width + k) + 2 * k)
            _unknown_codes(ints + n, n, levels, ints, named, &unknown[0, 0])
    finally:
        free(ints)
        free(doubles)
        free(named)



# ------------------------------------------------------------------------------------------------
# Explanations (features/explain.py): what each line says of its basket's predicted class
# ------------------------------------------------------------------------------------------------
cdef void _explain(const int* rows, Py_ssize_t n, Py_ssize_t levels, const double* spend, const double* quantity,
                   const int* basket, const int* predicted, const _Tables* t, int* best, double* best_p,
                   int* source, double* p_pred, double* p) noexcept nogil:
    """Per line (as `_add_lines` describes it): its likeliest class and that class's probability, the finest level
    whose code is known (-1: only its price band), and its probability of its basket's `predicted` class."""
    cdef Py_ssize_t k = t.k, i, j
    cdef int c
    for i in range(n):
        _line_p(i, rows, n, levels, _band(_log_price(spend[i], quantity[i]), t.edges, t.n_edges), t.counts,
                t.totals, t.offsets, t.prior, t.strength, k, p)
        c = <int> _argmax(p, k)
        best[i], best_p[i], p_pred[i], source[i] = c, p[c], p[predicted[basket[i]]], -1
        for j in range(levels):
            if rows[j * n + i] >= 0:
                source[i] = <int> j
                break


cdef enum:
    MAX_TOP = 16  # most drivers listed each way


cdef list _drivers(list lines, const double* a, Py_ssize_t size, Py_ssize_t top, double sign):
    """Up to `top` lines whose contribution times `sign` is largest and positive, largest first."""
    cdef list out = []
    cdef Py_ssize_t picked[MAX_TOP]
    cdef Py_ssize_t r, i, j, chosen
    cdef double v, most
    cdef bint taken
    for r in range(top):
        chosen, most = -1, 0.0
        for i in range(size):
            v = sign * a[i]
            if v > most:
                taken = False
                for j in range(r):
                    taken = taken or picked[j] == i
                if not taken:
                    chosen, most = i, v
        if chosen < 0:
            break
        picked[r] = chosen
        line = <dict> lines[chosen]
        out.append({"line": chosen, "product_id": line["product_id"], "contribution": a[chosen]})
    return out


cdef list _explanations(list products, Py_ssize_t nb, const int* basket, const int* predicted, const int* best,
                        const double* best_p, const int* source, const double* p_pred, double* a, const _Tables* t,
                        tuple classes, list names, Py_ssize_t top):
    """One explanation per basket from the per-line facts of `_explain` (lines grouped by basket, in order):
    contribution a_i = (p_pred_i - prior_c) / n, the lines, the top drivers each way (features/explain.py)."""
    cdef list out = [], lines
    cdef Py_ssize_t n = len(products), start = 0, end, b, i, last = len(names) - 1
    cdef double base, per, total
    cdef int c
    for b in range(nb):
        end = start
        while end < n and basket[end] == b:
            end += 1
        c = predicted[b]
        base, per, total = t.prior[c], 1.0 / (end - start if end - start > 1 else 1), 0.0
        lines = []
        for i in range(start, end):
            a[i - start] = (p_pred[i] - base) * per
            total += a[i - start]
            lines.append({"product_id": products[i], "points_to": classes[best[i]], "probability": best_p[i],
                          "source": names[source[i] if source[i] >= 0 else last], "known": source[i] == 0,
                          "contribution": a[i - start]})
        out.append({"class": classes[c], "prior": base, "evidence": base + total, "lines": lines,
                    "drivers_for": _drivers(lines, a, end - start, top, 1.0),
                    "drivers_against": _drivers(lines, a, end - start, top, -1.0)})
        start = end
    if start != n:
        raise ValueError("the lines must be grouped by basket, in basket order")
    return out



def _check_top(Py_ssize_t top):
    if not 1 <= top <= MAX_TOP:
        raise ValueError(f"top must be 1..{MAX_TOP}")


def explain_lines(const int[:, ::1] level_rows, const double[::1] spend, const double[::1] quantity,
                  const int[::1] basket, const int[::1] predicted, KernelTables t, list products, tuple classes,
                  list names, Py_ssize_t top):
    """One explanation per basket (`_explanations`) of lines already looked up in the tables, grouped by basket
    in order; `predicted` holds each basket's class, `names` each source level's name (-1 last)."""
    cdef Py_ssize_t n = level_rows.shape[1], k = t.c.k, i
    cdef int* ints
    cdef double* doubles
    _check_top(top)
    if spend.shape[0] != n or quantity.shape[0] != n or basket.shape[0] != n or len(products) != n:
        raise ValueError("one spend, quantity, basket and product per line")
    for i in range(n):
        if not 0 <= basket[i] < predicted.shape[0] or not 0 <= predicted[basket[i]] < k:
            raise ValueError("a line's basket or its predicted class is out of range")
    ints = <int*> malloc((2 * n + 1) * sizeof(int))
    doubles = <double*> malloc((3 * n + k + 1) * sizeof(double))
    try:
        if ints == NULL or doubles == NULL:
            raise MemoryError()
        if n:
            with nogil:
                _explain(&level_rows[0, 0], n, level_rows.shape[0], &spend[0], &quantity[0], &basket[0],
                         &predicted[0], &t.c, ints, doubles, ints + n, doubles + n, doubles + 3 * n)
        return _explanations(products, predicted.shape[0], &basket[0] if n else NULL,
                             &predicted[0] if predicted.shape[0] else NULL, ints, doubles, ints + n,
                             doubles + n, doubles + 2 * n, &t.c, classes, names, top)
    finally:
        free(ints)
        free(doubles)


def client_explain(list baskets, tuple hierarchy_fields, list row_of, KernelTables t, list predicted,
                   list products, tuple classes, list names, Py_ssize_t top):
    """`explain_lines` of client baskets (as `client_features` takes them; `products`: every line's product code)
    in one call: a request's explanation costs one call, not a dozen small NumPy arrays."""
    cdef Py_ssize_t nb = len(baskets), n = 0, levels = len(row_of), k = t.c.k, b
    cdef int* ints = NULL
    cdef double* doubles = NULL
    cdef unsigned char* named = NULL
    cdef _LineSink sink
    _check_top(top)
    if len(predicted) != nb:
        raise ValueError("one predicted class per basket")
    for b in range(nb):
        n += len(baskets[b])
        if not 0 <= <int> predicted[b] < k:
            raise ValueError("a predicted class is out of range")
    if len(products) != n:
        raise ValueError("one product per line")
    sink = _sink(hierarchy_fields, row_of, n)
    ints = <int*> malloc(((3 + levels) * n + nb + 1) * sizeof(int))
    doubles = <double*> malloc((5 * n + k + 1) * sizeof(double))
    named = <unsigned char*> malloc(n + 1)
    try:
        _fill_into(sink, baskets, ints, doubles, named)
        for b in range(nb):
            ints[(3 + levels) * n + b] = <int> predicted[b]
        if n:
            with nogil:
                _explain(ints + n, n, levels, doubles + n, doubles, ints, ints + (3 + levels) * n, &t.c,
                         ints + (1 + levels) * n, doubles + 2 * n, ints + (2 + levels) * n, doubles + 3 * n,
                         doubles + 5 * n)
        return _explanations(products, nb, ints, ints + (3 + levels) * n, ints + (1 + levels) * n, doubles + 2 * n,
                             ints + (2 + levels) * n, doubles + 3 * n, doubles + 4 * n, &t.c, classes, names, top)
    finally:
        free(ints)
        free(doubles)
        free(named)
