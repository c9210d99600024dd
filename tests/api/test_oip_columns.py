"""The OIP's compiled path from tensors to baskets (`wire.TensorBaskets`) against its checked twin: the same
baskets for every valid batch, and a refusal (None) for every broken rule, which the checked path names."""

from __future__ import annotations

import json
import re
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retail_prediction.api import oip
from retail_prediction.api.errors import ApiError
from retail_prediction.api.oip_tensors import parse_request
from retail_prediction.api.schemas import Limits

LIMITS = Limits(max_string_length=8, max_basket_lines=5, max_batch_size=4)
ids = st.text("abc", min_size=1, max_size=2)
codes = st.text("xyz9 ", max_size=3)
line = st.tuples(ids, st.text("PQ12", min_size=1, max_size=4), st.floats(0.01, 1e6), st.integers(1, 1000),
                 codes, codes)


def _body(rows: list[tuple[Any, ...]], binary: bool) -> tuple[bytes, bytes | None]:
    columns = {"basket_id": [r[0] for r in rows], "product_id": [r[1] for r in rows],
               "price": [r[2] for r in rows], "quantity": [r[3] for r in rows],
               "category": [r[4] for r in rows], "prod_code_10": [r[5] for r in rows]}
    types = {"price": ("FP64", "d"), "quantity": ("INT64", "q")}
    inputs, blobs = [], []
    for name, values in columns.items():
        datatype, fmt = types.get(name, ("BYTES", ""))
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": [len(values)]}
        if binary:
            blob = (struct.pack(f"<{len(values)}{fmt}", *values) if fmt else
                    b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values))
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values
        inputs.append(tensor)
    head = json.dumps({"inputs": inputs}).encode()
    return head + b"".join(blobs), str(len(head)).encode() if binary else None


def _compiled(request: Any, raw: Any) -> Any:
    return oip.tensor_baskets(LIMITS)(request.inputs, raw)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(line, min_size=1, max_size=24), binary=st.booleans())
def test_the_compiled_path_answers_as_the_checked_one(rows: list[tuple[Any, ...]], binary: bool) -> None:
    body, header = _body(rows, binary)
    request, raw = parse_request(body, header)
    fast = _compiled(request, raw)
    try:
        checked = oip._checked_baskets(request, raw, LIMITS)
    except ApiError as exc:  # a limit, a mangled code: refused by both, named by the checked path
        assert fast is None
        with pytest.raises(ApiError, match=re.escape(exc.message)):
            oip.baskets_from(request, raw, LIMITS)
        return
    assert fast is not None and fast == checked == oip.baskets_from(request, raw, LIMITS)


@pytest.mark.parametrize(("change", "says"), [
    (lambda r: r.__setitem__(0, ("", *r[0][1:])), "input 'basket_id' element 0: must not be empty"),
    (lambda r: r.__setitem__(1, (r[1][0], "P" * 9, *r[1][2:])), "at most 8 characters"),
    (lambda r: r.__setitem__(1, (r[1][0], "1E+5", *r[1][2:])), "spreadsheet-mangled"),
    (lambda r: r.__setitem__(0, (*r[0][:2], 0.0, *r[0][3:])), "input 'price' element 0: must be a number greater"),
    (lambda r: r.__setitem__(0, (*r[0][:4], "w" * 9, r[0][5])), "input 'category' element 0"),
    (lambda r: r.extend([("a", "P1", 1.0, 1, "", "")] * 5), "more than 5 lines"),
    (lambda r: r.extend([(b, "P1", 1.0, 1, "", "") for b in "wxyz"]), "more than 4 baskets"),
])
@pytest.mark.parametrize("binary", [False, True])
def test_a_broken_rule_leaves_the_compiled_path_for_the_checked_one(change: Any, says: str, binary: bool) -> None:
    rows: list[tuple[Any, ...]] = [("a", "P1", 1.5, 2, "x", "y"), ("b", "P2", 2.0, 1, "", "z")]
    change(rows)
    body, header = _body(rows, binary)
    request, raw = parse_request(body, header)
    assert _compiled(request, raw) is None
    with pytest.raises(ApiError, match=re.escape(says)):
        oip.baskets_from(request, raw, LIMITS)


def _tensors() -> dict[str, Any]:
    return json.loads(_body([("a", "P1", 1.5, 2, "x", "y"), ("b", "P2", 2.0, 1, "", "z")], False)[0])


@pytest.mark.parametrize(("change", "says"), [
    (lambda r: r["inputs"].append({"name": "colour", "datatype": "BYTES", "shape": [2], "data": ["r", "g"]}),
     "unexpected inference input 'colour'"),
    (lambda r: r["inputs"].append(r["inputs"][0]), "input 'basket_id' is given twice"),
    (lambda r: r["inputs"].pop(2), "missing inference input(s): price"),
    (lambda r: r["inputs"][2].update(datatype="BYTES"), "input 'price': datatype BYTES must be one of"),
    (lambda r: r["inputs"][1].update(datatype="FP32"), "input 'product_id': datatype FP32 must be BYTES"),
    (lambda r: r["inputs"][2].update(shape=[3]), "input 'price': 2 elements for shape [3]"),
    (lambda r: r["inputs"][2].update(shape=[-2]), "must be a list of non-negative sizes"),
    (lambda r: r["inputs"][2].pop("data"), "input 'price': no data"),
    (lambda r: r["inputs"][0].update(data="ab"), "input 'basket_id': data must be a list"),
])
def test_unusual_tensors_leave_the_compiled_path_for_the_checked_one(change: Any, says: str) -> None:
    sent = _tensors()
    change(sent)
    request, raw = parse_request(json.dumps(sent).encode(), None)
    assert _compiled(request, raw) is None
    with pytest.raises(ApiError, match=re.escape(says)):
        oip.baskets_from(request, raw, LIMITS)


def test_the_nested_form_takes_the_checked_path_to_the_same_baskets() -> None:
    flat = _tensors()
    nested = {"inputs": [{**t, "shape": [2, 1], "data": [[v] for v in t["data"]]} for t in flat["inputs"]]}
    request, raw = parse_request(json.dumps(nested).encode(), None)
    assert _compiled(request, raw) is None
    assert oip.baskets_from(request, raw, LIMITS) == _compiled(*parse_request(json.dumps(flat).encode(), None))


@pytest.mark.parametrize(("size", "tail", "says"), [
    (5, b"ab", "input 'price': binary_data_size 5 does not fit the 2 bytes of binary data left in the body"),
    (-1, b"", "input 'price': binary_data_size -1 does not fit the 0 bytes"),
    ("3", b"abc", "input 'price': binary_data_size '3' does not fit the 3 bytes"),
    (True, b"a", "input 'price': binary_data_size True does not fit the 1 bytes"),
    (10**30, b"a", "binary_data_size 1000000000000000000000000000000 does not fit"),
    (2, b"abcd", "2 bytes of binary data after the inputs that declare binary_data_size"),
])
def test_binary_sizes_that_do_not_fit_are_named(size: Any, tail: bytes, says: str) -> None:
    head = json.dumps({"inputs": [{"name": "price", "datatype": "FP64", "shape": [1],
                                   "parameters": {"binary_data_size": size}}]}).encode()
    with pytest.raises(ApiError, match=re.escape(says)):
        parse_request(head + tail, str(len(head)).encode())


def test_binary_parts_are_views_of_the_body_in_input_order() -> None:
    inputs = [{"name": n, "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": size}}
              for n, size in (("price", 2), ("quantity", 0), ("basket_id", 3))]
    head = json.dumps({"inputs": [*inputs, {"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode()
    _, raw = parse_request(head + b"abcde", str(len(head)).encode())
    assert {k: bytes(v) for k, v in raw.items()} == {"price": b"ab", "quantity": b"", "basket_id": b"cde"}
