"""Open Inference Protocol (KServe v2) tensors on the wire: the JSON form and the binary tensor data extension.

A request body is JSON, or, with the `Inference-Header-Content-Length: N` header, N bytes of JSON followed by
the raw data of the inputs whose `parameters.binary_data_size` is set, in input order (tritonclient's
default). BYTES elements in binary are a 4-byte little-endian length and the bytes. Everything here is checked
against the body's actual size before it is read, so a crafted header or size costs nothing but a 400.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Set as AbstractSet
from typing import Any

import msgspec
import numpy as np

from .errors import ApiError
from .wire import WireError, binary_parts, split_bytes

HEADER_LENGTH = b"inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]

# Datatypes a numeric input may come in, and their NumPy dtypes (little-endian, as the extension says).
_BIG = 1 << 1000  # well within a double's range (~2**1024)
# The struct formats memoryview reads each datatype with, on a little-endian host (FP16: NumPy only).
_NATIVE = {"FP64": "d", "FP32": "f", "INT64": "q", "INT32": "i", "INT16": "h", "INT8": "b", "UINT64": "Q",
           "UINT32": "I", "UINT16": "H", "UINT8": "B"} if sys.byteorder == "little" else {}
NUMERIC = {"FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2",
           "INT8": "i1", "UINT64": "<u8", "UINT32": "<u4", "UINT16": "<u2", "UINT8": "u1"}
_ITEMSIZE = {name: np.dtype(code).itemsize for name, code in NUMERIC.items()}


# Parameters default to None, not {}: a dict made for every tensor of every request costs more than the test.
# No garbage-collector tracking: a decoded request holds no cycles.
class Tensor(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestedOutput(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct, forbid_unknown_fields=False, gc=False):
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[RequestedOutput] | None = None


_DECODER = msgspec.json.Decoder(InferRequest)
_NO_BINARY = memoryview(b"")


def bad(message: str) -> ApiError:
    """A 400 with the protocol's error body (the routes turn it into {"error": message})."""
    return ApiError(400, "bad_request", message)


def parse_request(body: bytes, header_length: bytes | None) -> tuple[InferRequest, dict[str, memoryview]]:
    """The request and, per input sent as binary data, its bytes (views into the body, not copies)."""
    json_part, binary = body, _NO_BINARY
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise bad(f"Inference-Header-Content-Length {header_length.decode('latin-1')[:20]!r} is not a "
                      f"length within the {len(body)}-byte body")
        size = int(header_length)
        json_part, binary = body[:size], memoryview(body)[size:]
    try:
        request = _DECODER.decode(json_part)
    except msgspec.ValidationError as exc:
        raise bad(f"malformed inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise bad(f"the inference request is not valid JSON: {exc}") from None
    try:
        return request, binary_parts(request.inputs, binary)
    except WireError as exc:
        raise bad(str(exc)) from None


def binary_numbers(data: memoryview, datatype: str, n: int) -> list[float] | None:
    """`n` numbers of a numeric datatype in binary form (None if the size does not fit): read by memoryview
    where the host's byte order is the protocol's (~0.4 µs for a basket; NumPy takes ~4 µs to start)."""
    if len(data) != n * _ITEMSIZE[datatype]:
        return None
    native = _NATIVE.get(datatype)
    if native is not None:
        return data.cast(native).tolist()
    return np.frombuffer(data, dtype=NUMERIC[datatype]).astype(np.float64).tolist()


def element_count(tensor: Tensor) -> int:
    shape = tensor.shape
    if len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0:  # the usual [n]
        return shape[0]
    if not tensor.shape or any(type(d) is not int or d < 0 for d in tensor.shape):
        raise bad(f"input '{tensor.name}': shape {tensor.shape} must be a list of non-negative sizes")
    if len(tensor.shape) > 2 or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise bad(f"input '{tensor.name}': shape {tensor.shape} must be [n] or [n, 1] (one row per line)")
    return tensor.shape[0]


def strings(tensor: Tensor, raw: memoryview | None, limit: int, *, allow_empty: bool = False) -> list[str]:
    """A BYTES input's elements as text: at most `limit` characters each, UTF-8; empty only if allowed."""
    n = element_count(tensor)
    if tensor.datatype != "BYTES":
        raise bad(f"input '{tensor.name}': datatype {tensor.datatype} must be BYTES")
    values = _binary_strings(tensor.name, raw, n) if raw is not None else _json_list(tensor, n)
    # The checks run as C loops over the whole column; the element is looked for only when one fails.
    if raw is None and not all(type(value) is str for value in values):  # binary data decodes to str
        i, value = next((i, v) for i, v in enumerate(values) if type(v) is not str)
        raise bad(f"input '{tensor.name}' element {i}: must be a string, not {type(value).__name__}")
    if not allow_empty and "" in values:
        raise bad(f"input '{tensor.name}' element {values.index('')}: must not be empty")
    if values and max(map(len, values)) > limit:
        i = next(i for i, v in enumerate(values) if len(v) > limit)
        raise bad(f"input '{tensor.name}' element {i}: must have at most {limit} characters")
    return values


def numbers(tensor: Tensor, raw: memoryview | None) -> list[float]:
    """A numeric input's elements as plain Python floats (a basket's few lines cost less that way than
    through NumPy), checked for type and size; the amounts' range is the caller's check."""
    n = element_count(tensor)
    if tensor.datatype not in NUMERIC:
        raise bad(f"input '{tensor.name}': datatype {tensor.datatype} must be one of {', '.join(NUMERIC)}")
    if raw is not None:
        values = binary_numbers(raw, tensor.datatype, n)
        if values is None:
            raise bad(f"input '{tensor.name}': {len(raw)} bytes of binary data for {n} {tensor.datatype} elements")
    else:
        values = _json_list(tensor, n)
        if not all(type(v) is float or type(v) is int for v in values):
            bad_at = next(i for i, v in enumerate(values) if type(v) is not float and type(v) is not int)
            raise bad(f"input '{tensor.name}' element {bad_at}: must be a number")
    # An integer beyond a double's range (JSON allows 400 digits) is left as it is, for the amount check to
    # refuse: float() of it would raise.
    return [float(v) if type(v) is float or -_BIG < v < _BIG else v for v in values]


def _json_list(tensor: Tensor, n: int) -> list[Any]:
    data = tensor.data
    if type(data) is list and len(data) == n and (not data or type(data[0]) is not list):  # the usual flat list
        return data
    if data is None:
        raise bad(f"input '{tensor.name}': no data (neither 'data' nor binary_data_size)")
    if not isinstance(data, list):
        raise bad(f"input '{tensor.name}': data must be a list")
    if data and isinstance(data[0], list):  # the row-major nested form of an [n, 1] tensor
        data = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in data]
    if len(data) != n:
        raise bad(f"input '{tensor.name}': {len(data)} elements for shape {tensor.shape}")
    return data


def _binary_strings(name: str, raw: memoryview, n: int) -> list[str]:
    if n * 4 > len(raw):  # each element takes 4 bytes at least (and a C size must hold n)
        raise bad(f"input '{name}': {len(raw)} bytes of binary data cannot hold {n} BYTES elements")
    try:
        return split_bytes(raw, n)
    except WireError as exc:
        raise bad(f"input '{name}': {exc}" if exc.element == n or "ends before" in str(exc)
                  else f"input '{name}' {exc}") from None


# ---- the answer


def bytes_binary(values: list[str]) -> bytes:
    """BYTES elements in the binary form: each a 4-byte little-endian length and its UTF-8 bytes."""
    parts = []
    for value in values:
        data = value.encode()
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def little_endian(values: array) -> bytes:
    """A numeric output's raw data, little-endian as the extension says."""
    if sys.byteorder == "little":
        return values.tobytes()
    swapped = array(values.typecode, values)
    swapped.byteswap()
    return swapped.tobytes()


class Output(msgspec.Struct, gc=False):
    """An output tensor as JSON carries it: `data` flat and row-major, str for BYTES, numbers already of the
    datatype's precision (FP32 rounded), so that binary data, if asked for, carries the same values."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class _BinaryOutput(msgspec.Struct, gc=False):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, int]


class _Answer(msgspec.Struct, gc=False, omit_defaults=True, kw_only=True):
    """The response's JSON, keys in the protocol's order (`id` only when the request had one): a struct
    encodes in one call without building a dict per output."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[Output | _BinaryOutput]


_ENCODER = msgspec.json.Encoder()
_TYPECODES = {"FP64": "d", "FP32": "f", "INT64": "q", "INT32": "i"}  # the outputs' numeric datatypes


def encode_outputs(outputs: list[Output], binary: AbstractSet[str], model_name: str, model_version: str,
                   request_id: str | None) -> tuple[bytes, int | None]:
    """The response body; the outputs named in `binary` go as binary data after the JSON. Returns the body
    and the JSON part's length when there is binary data."""
    if not binary:  # the JSON answer: one encode, nothing else
        return _ENCODER.encode(_Answer(model_name=model_name, model_version=model_version, id=request_id,
                                                outputs=outputs)), None
    described: list[Output | _BinaryOutput] = []
    blobs = []
    for output in outputs:
        if output.name in binary:
            data = output.data
            blob = bytes_binary(data) if output.datatype == "BYTES" else little_endian(
                array(_TYPECODES[output.datatype], data))
            blobs.append(blob)
            described.append(_BinaryOutput(output.name, output.datatype, output.shape,
                                           {"binary_data_size": len(blob)}))
        else:
            described.append(output)
    header = _ENCODER.encode(_Answer(model_name=model_name, model_version=model_version, id=request_id,
                                     outputs=described))
    if not blobs:  # binary data asked for outputs not sent
        return header, None
    return b"".join([header, *blobs]), len(header)
