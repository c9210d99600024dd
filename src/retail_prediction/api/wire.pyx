# cython: boundscheck=False, wraparound=False
"""The inference protocol's BYTES tensors in binary form, split in one compiled pass: each element is a
4-byte little-endian length and its bytes, decoded as UTF-8. In Python the loop costs ~0.35 µs an element,
which made binary requests slower than JSON ones (docs/benchmarks.md)."""

from cpython.unicode cimport PyUnicode_DecodeUTF8


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
