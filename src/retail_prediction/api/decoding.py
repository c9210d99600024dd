"""Request bodies -> the contract's checked structs (`schemas.request_types`), or a 422 naming the field.

msgspec decodes and checks a body in one pass and stops at the first error. Its messages name the place
as a JSON path where an object-form line is only `[...]` (the key is not repeated), so for those the
offending line is found again by checking each line of that basket on its own: a slow path, taken only
for a refused body. Field paths are dotted, as a client writes them: `basket_items.P1001.quantity`,
`baskets.3.basket_items`.

A number with no fractional part (`2.0`) is accepted where an integer belongs, as JSON Schema's `integer`
does: msgspec's strict decoding refuses it, so such a refusal decodes the body again with those floats as
ints (the valid requests' path is unchanged).

msgspec's wording (``Expected `float` > 0.0``) is put in plain words (`must be a number greater than 0`)
after the field's path: `basket_items.3.quantity: must be a number greater than 0`.

Two rules a JSON schema cannot state are checked after decoding: a product code that a spreadsheet turned
into a number (`9.94E+14`, the file loader's rule too) is refused, and an object-form line's optional
product_id must equal its key.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from ..contract import SCIENTIFIC_ID_PATTERN, Basket, BasketBatch
from .errors import ApiError
from .schemas import RequestTypes

T = TypeVar("T")
_MANGLED = re.compile(SCIENTIFIC_ID_PATTERN)
# Such a code starts with a digit or a space: every other first character skips the regex.
_MANGLED_START = frozenset("0123456789") | {chr(c) for c in range(0x3001) if chr(c).isspace()}
_PLACE = re.compile(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]")
_FIELD_IN_MESSAGE = re.compile(r"^Object (?:contains unknown|missing required) field `([^`]*)`")
# The body again, untyped, to find a refused object-form line: floats through float() so that an
# out-of-range number (1e999) decodes (to inf) and is refused by the line's own check, not here.
_UNTYPED = msgspec.json.Decoder(float_hook=float)
# The refusal of an integral float (`"weekday": 2.0`) where an integer belongs: decoded again, on this slow
# path only, with such floats as ints.
_FLOAT_FOR_INT = re.compile(r"Expected `int( \| null)?`, got `float`")
# msgspec's messages, and their plain words.
_BOUND = re.compile(r"^Expected `(\w+)` (>=|<=|>|<) (-?[\d.e+]+)$")
_LENGTH = re.compile(r"^Expected `(\w+)` of length (>=|<=) (\d+)$")
_TYPE = re.compile(r"^Expected `([\w |]+)`, got `(\w+)`$")
_KINDS = {"float": "a number", "int": "a whole number", "str": "a string", "bool": "true or false",
          "object": "an object", "array": "a list", "null": "null"}
_GOT = {**_KINDS, "int": "a number", "float": "a number"}
_COMPARED = {">": "greater than", ">=": "at least", "<": "less than", "<=": "at most"}


def invalid(field: str, message: str, kind: str = "value_error") -> ApiError:
    """A 422 whose message starts with the field's path, e.g. `basket_items.P1: Expected float > 0.0`."""
    return ApiError(422, "validation_error", f"{field}: {message}",
                    [{"field": field, "message": message, "type": kind}])


def decode_predict(body: bytes, types: RequestTypes) -> Basket:
    request = _decode(body, types.decode_predict, types)
    check_basket(request, "")
    return request


def decode_batch(body: bytes, types: RequestTypes) -> BasketBatch:
    batch = _decode(body, types.decode_batch, types)
    for i, request in enumerate(batch.baskets):
        check_basket(request, f"baskets.{i}.")
    return batch


_FLAGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def decode_explain(query_string: bytes) -> bool:
    """The `explain` query parameter (true/false, 1/0, yes/no, on/off), False when absent; a 422 naming it
    otherwise. A request without a query string costs one comparison."""
    if not query_string:
        return False
    values = [v for k, v in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True) if k == "explain"]
    if not values:
        return False
    flag = _FLAGS.get(values[-1].strip().lower())
    if flag is None or len(values) > 1:
        raise invalid("explain", "must be given once, as true or false", "bool_parsing")
    return flag


def check_basket(request: Basket, prefix: str) -> None:
    """The rules of a basket's product codes that the schema cannot state (see the module's docstring)."""
    items = request.basket_items
    if type(items) is dict:
        for key, line in items.items():
            if key[0] in _MANGLED_START and _MANGLED.match(key):
                raise _mangled(f"{prefix}basket_items.{key}", key)
            product = line.product_id
            if product is not None and product != key:
                if product[0] in _MANGLED_START and _MANGLED.match(product):
                    raise _mangled(f"{prefix}basket_items.{key}.product_id", product)
                raise invalid(f"{prefix}basket_items",
                              f"line {key!r}: product_id {product!r} differs from its key")
        return
    for i, line in enumerate(items):
        product = line.product_id
        if product[0] in _MANGLED_START and _MANGLED.match(product):
            raise _mangled(f"{prefix}basket_items.{i}.product_id", product)


def looks_mangled(code: str) -> bool:
    """A product code a spreadsheet turned into a number (`9.94E+14`): refused wherever codes come in."""
    return code[0] in _MANGLED_START and _MANGLED.match(code) is not None


def _mangled(field: str, code: str) -> ApiError:
    return invalid(field, f"{code!r} looks like a spreadsheet-mangled number, not a product code")


def _decode(body: bytes, decoder: msgspec.json.Decoder[T], types: RequestTypes) -> T:
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        error = str(exc)
    except msgspec.DecodeError as exc:
        raise ApiError(422, "validation_error", f"request body is not valid JSON: {exc}",
                       [{"field": "body", "message": str(exc), "type": "json_invalid"}]) from None
    if _FLOAT_FOR_INT.match(error):
        try:
            return msgspec.convert(_integral_floats_as_ints(_UNTYPED.decode(body)), decoder.type, strict=True)
        except msgspec.ValidationError as exc:
            error = str(exc)
    raise _located(error, body, types)


def _integral_floats_as_ints(tree: Any) -> Any:
    """Every integral float of a decoded body (`2.0`) as an int, in place: JSON Schema's `integer` admits
    them, msgspec's strict `int` does not. Iterative, so a deeply nested body cannot exhaust the stack."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for key, value in node.items() if type(node) is dict else enumerate(node):
            if type(value) is float and value.is_integer():
                node[key] = int(value)
            elif type(value) in (dict, list):
                stack.append(value)
    return tree


def plain(message: str) -> str:
    """msgspec's message in plain words (an unknown one as it is, without its backticks)."""
    if message.startswith("Object missing required field"):
        return "is required"
    if message.startswith("Object contains unknown field"):
        return "is not a known field"
    if match := _BOUND.match(message):
        kind, op, bound = match.groups()
        number = float(bound)
        shown = str(int(number)) if number.is_integer() else bound
        return f"must be {_KINDS.get(kind, kind)} {_COMPARED[op]} {shown}"
    if match := _LENGTH.match(message):
        kind, op, size = match.groups()
        if op == ">=" and size == "1":
            return "must not be empty"
        unit = "character" if kind == "str" else "entry" if kind == "object" else "item"
        units = unit if size == "1" else "entries" if unit == "entry" else f"{unit}s"
        return f"must have {_COMPARED[op]} {size} {units}"
    if match := _TYPE.match(message):
        expected = [_KINDS.get(kind, kind) for kind in match.group(1).split(" | ") if kind != "null"]
        got = match.group(2)
        shown = "a number with a fraction" if got == "float" and "int" in match.group(1) else _GOT.get(got, got)
        return f"must be {' or '.join(expected)}, not {shown}"
    if message.startswith("Expected `str` matching regex "):
        return f"must match the pattern {message.removeprefix('Expected `str` matching regex ')}"
    if message == "Number out of range":
        return "is out of range"
    return message.replace("`", "")


def _located(error: str, body: bytes, types: RequestTypes) -> ApiError:
    """msgspec's error as a 422 naming the field (see the module's docstring)."""
    message, _, where = error.partition(" - at `")  # no place: the body itself
    key_error = where.startswith("key` in `")
    path = where.removeprefix("key` in `").removesuffix("`")
    try:
        parts, message = _field_parts(path, key_error, message, body, types)
    except (LookupError, TypeError, ValueError, msgspec.DecodeError):  # never expected; the raw path will do
        parts = [path]
    field = _FIELD_IN_MESSAGE.match(message)
    if field:  # a missing or unknown field: name it in the path, as for any other field
        parts.append(field.group(1))
    kind = "missing" if "missing required" in message else "extra_forbidden" if "unknown field" in message else (
        "value_error")
    return invalid(".".join(parts) or "body", plain(message), kind)


def _field_parts(path: str, key_error: bool, message: str, body: bytes,
                 types: RequestTypes) -> tuple[list[str], str]:
    """The parts of a field's dotted path, and the message, from msgspec's JSON path (`$.a[0].b`)."""
    node: Any = _UNTYPED.decode(body) if "[...]" in path or key_error else None
    parts: list[str] = []
    for name, index in _PLACE.findall(path.removeprefix("$")):
        if not name and not index:  # an object-form line: the only object keyed by client data
            key, message, inside = _failing_line(node, types)
            return [*parts, key, *inside], message
        parts.append(name or index)
        if node is not None:
            node = node[name] if name else node[int(index)]
    if key_error:
        key, message, _ = _failing_line(node, types)
        parts.append(key)
    return parts, message


def _failing_line(lines: Any, types: RequestTypes) -> tuple[str, str, list[str]]:
    """(key, msgspec's message, path inside the line) of the first object-form line that does not pass."""
    for key, line in lines.items():
        for value, kind in ((key, types.text), (line, types.keyed_line)):
            try:
                msgspec.convert(value, kind)
            except msgspec.ValidationError as exc:
                message, _, where = str(exc).partition(" - at `")
                rest = [name or index for name, index in _PLACE.findall(where.removesuffix("`").removeprefix("$"))]
                return key or '""', message, rest
    return "*", "invalid line", []
