# cython: boundscheck=False, wraparound=False
"""The inference protocol's compiled loops: BYTES tensors in binary form split (each element a 4-byte
little-endian length and its UTF-8 bytes), and a request's input tensors turned into baskets in one pass
(`TensorBaskets`). Per element and per line, Python loops cost more than the rest of a request's parsing
(docs/benchmarks.md)."""

from cpython.unicode cimport Py_UNICODE_ISSPACE, PyUnicode_DecodeUTF8


class WireError(ValueError):
    """`element`: where the data stopped making sense; the message says how."""

    def __init__(self, element, message):
        super().__init__(message)
        self.element = element


def split_bytes(const unsigned char[::1] raw, Py_ssize_t n):
    """The `n` elements of `raw` as str; WireError if the data ends early, an element is not UTF-8, or bytes
    are left over."""
    cdef Py_ssize_t offset = 0, end = raw.shape[0], i
    cdef unsigned int size
    cdef list out = []
    for i in range(n):
        if end - offset < 4:
            raise WireError(i, f"binary data ends before element {i} of {n}")
        size = raw[offset] | (raw[offset + 1] << 8) | (raw[offset + 2] << 16) | (<unsigned int> raw[offset + 3] << 24)
        offset += 4
        if <Py_ssize_t> size > end - offset:
            raise WireError(i, f"element {i}: {size} bytes declared, {end - offset} left")
        try:
            out.append(PyUnicode_DecodeUTF8(<const char*> &raw[offset], size, NULL) if size else "")
        except UnicodeDecodeError:
            raise WireError(i, f"element {i}: not UTF-8 text") from None
        offset += size
    if offset != end:
        raise WireError(n, f"{end - offset} bytes left after its {n} elements")
    return out


cdef inline bint _text_ok(object value, Py_ssize_t limit, bint allow_empty):
    cdef Py_ssize_t size
    if type(value) is not str:
        return False
    size = len(<str> value)
    return size <= limit and (allow_empty or size > 0)


cdef inline object _amount(object value, double most):
    """The value as a float if it is a number in (0, most], else None (a float as it is: no new object)."""
    cdef double v
    if type(value) is float:
        v = <double> value
        return value if 0 < v <= most else None  # NaN fails too
    # An int is compared as an integer: a 400-digit one must not overflow a double.
    if type(value) is not int or not 0 < value <= most:
        return None
    return <double> value


def binary_parts(list inputs, object binary):
    """Per input that declares `parameters.binary_data_size`, its bytes: views into `binary` (a memoryview),
    in input order; WireError (its message names the input) if a size does not fit or bytes are left over."""
    cdef dict raw = {}
    cdef Py_ssize_t offset = 0, end = len(binary), i
    cdef object parameters, size
    for i, tensor in enumerate(inputs):
        parameters = tensor.parameters
        if parameters is None:
            continue
        size = parameters.get("binary_data_size")
        if size is None:
            continue
        if type(size) is not int or not 0 <= size <= end - offset:
            raise WireError(i, f"input '{tensor.name}': binary_data_size {size!r} does not fit the "
                               f"{end - offset} bytes of binary data left in the body")
        raw[tensor.name] = binary[offset:offset + <Py_ssize_t> size]
        offset += <Py_ssize_t> size
    if offset != end:
        raise WireError(len(inputs), f"{end - offset} bytes of binary data after the inputs that declare binary_data_size")
    return raw


_BAD = object()  # a code that breaks a rule


cdef inline object _code(object column, Py_ssize_t i, Py_ssize_t limit):
    """Line i's code in a code column (None if the column is absent or the code is ""), or _BAD."""
    if column is None:
        return None
    code = (<list> column)[i]
    if not _text_ok(code, limit, True):
        return _BAD
    return code if len(<str> code) else None


cdef class TensorBaskets:
    """Input tensors -> (basket ids, baskets) in first-appearance order, in one compiled pass; calling it
    gives None if anything is unusual or breaks a rule, so that the caller's checked path can name it.

    Unusual: an input unknown, repeated, of another datatype or shape, with data that does not fit, or a
    required one missing. A rule: a string's type or length, an amount, a mangled product code, a limit.
    `names`: the inputs taken, in the order basket_id, product_id, quantity, price, then the five optional
    code columns ("" = no code) in `line`'s order; `text[i]`: whether input i is BYTES. JSON data is used as decoded, binary BYTES
    split here, binary numbers read by `binary_numbers(data, datatype, n)` (None if they do not fit).
    `line(product, quantity, price, *codes)` builds a line and `basket(lines)` a basket; `mangled(code)`
    says whether a code that starts with a digit or a space is a spreadsheet-mangled number."""

    cdef dict slots
    cdef tuple text
    cdef Py_ssize_t n_inputs, limit, max_baskets, max_lines
    cdef double most
    cdef object numeric, binary_numbers, line, basket, mangled

    def __init__(self, tuple names, tuple text, object numeric, object binary_numbers, object line,
                 object basket, object mangled, Py_ssize_t limit, Py_ssize_t max_baskets, Py_ssize_t max_lines,
                 double most):
        if len(names) != 9 or len(text) != 9:
            raise ValueError("basket_id, product_id, quantity, price and five code columns, each with its type")
        self.slots = {name: i for i, name in enumerate(names)}
        self.text, self.n_inputs = text, len(names)
        self.numeric, self.binary_numbers = numeric, binary_numbers
        self.line, self.basket, self.mangled = line, basket, mangled
        self.limit, self.max_baskets, self.max_lines, self.most = limit, max_baskets, max_lines, most

    def __call__(self, list inputs, dict raw):
        cdef list columns = [None] * self.n_inputs
        cdef Py_ssize_t i
        for tensor in inputs:
            found = self.slots.get(tensor.name)
            if found is None:
                return None
            i = <Py_ssize_t> found
            if columns[i] is not None:  # repeated
                return None
            values = self._column(tensor, raw, <bint> self.text[i])
            if values is None:
                return None
            columns[i] = values
        for i in range(4):
            if columns[i] is None:
                return None
        return self._group(columns[0], columns[1], columns[2], columns[3], columns[4:])

    cdef object _column(self, object tensor, dict raw, bint text):
        """One input's elements, or None if its datatype, shape or data do not fit."""
        cdef object shape = tensor.shape, datatype = tensor.datatype, data, values
        cdef Py_ssize_t n
        if (datatype == "BYTES") != text or (not text and datatype not in self.numeric):
            return None
        if type(shape) is not list or len(<list> shape) != 1 or type((<list> shape)[0]) is not int:
            return None
        if not 0 <= (<list> shape)[0] <= 1 << 40:  # a C size, and far beyond any body
            return None
        n = (<list> shape)[0]
        data = raw.get(tensor.name) if raw else None
        if data is None:
            values = tensor.data
            if type(values) is not list or len(<list> values) != n:
                return None
            return values
        if text:
            if n * 4 > len(data):  # each element takes 4 bytes at least
                return None
            try:
                return split_bytes(data, n)
            except WireError:
                return None
        return self.binary_numbers(data, datatype, n)

    cdef object _group(self, list ids, list products, list quantity, list price, list codes):
        """The columns grouped into baskets, or None if any element breaks a rule."""
        cdef Py_ssize_t n = len(ids), i, j
        cdef Py_ssize_t limit = self.limit, max_baskets = self.max_baskets, max_lines = self.max_lines
        cdef double most = self.most
        cdef dict where = {}
        cdef list groups = [], order = [], group, column
        cdef object key, product, q, p, c0, c1, c2, c3, c4, found, made, line = self.line, basket = self.basket
        cdef Py_UCS4 c
        if n == 0 or n > max_baskets * max_lines or len(products) != n or len(quantity) != n or len(price) != n:
            return None
        for j in range(5):
            if codes[j] is not None and len(<list> codes[j]) != n:
                return None
        for i in range(n):
            key, product = ids[i], products[i]
            if not _text_ok(key, limit, False) or not _text_ok(product, limit, False):
                return None
            c = (<str> product)[0]
            if (48 <= c <= 57 or Py_UNICODE_ISSPACE(c)) and self.mangled(product):
                return None
            q, p = _amount(quantity[i], most), _amount(price[i], most)
            if q is None or p is None:
                return None
            c0, c1, c2 = _code(codes[0], i, limit), _code(codes[1], i, limit), _code(codes[2], i, limit)
            c3, c4 = _code(codes[3], i, limit), _code(codes[4], i, limit)
            if c0 is _BAD or c1 is _BAD or c2 is _BAD or c3 is _BAD or c4 is _BAD:
                return None
            made = line(product, q, p, c0, c1, c2, c3, c4)  # a vectorcall: no argument tuple
            found = where.get(key)
            if found is None:
                if len(groups) == max_baskets:
                    return None
                where[key] = len(groups)
                groups.append([made])
                order.append(key)
            else:
                group = groups[<Py_ssize_t> found]
                if len(group) == max_lines:
                    return None
                group.append(made)
        return order, [basket(group) for group in groups]
