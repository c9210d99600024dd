# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The explanations' loops, compiled (features/explain.py): what each line says of its basket's predicted class.

Apart from `kernel.pyx` (the featurization's loops) so that each module keeps to one concern. They share
the tables, the line sink of client baskets and the per-line class distribution through `kernel.pxd`, whose
inline functions compile into this module as into kernel's: no call here costs more than in one module.
"""

from libc.stdlib cimport free, malloc

from .kernel cimport KernelTables, _argmax, _band, _fill_into, _line_p, _LineSink, _log_price, _sink, _Tables


cdef void _explain(const int* rows, Py_ssize_t n, Py_ssize_t levels, const double* spend, const double* quantity,
                   const int* basket, const int* predicted, const _Tables* t, int* best, double* best_p,
                   int* source, double* p_pred, double* p) noexcept nogil:
    """Per line (as kernel's `_add_lines` describes it): its likeliest class and that class's probability, the
    finest level whose code is known (-1: only its price band), and its probability of its basket's `predicted`
    class."""
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
