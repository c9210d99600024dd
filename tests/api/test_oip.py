"""The Open Inference Protocol routes, driven by a real client (tritonclient, JSON and binary tensor data)
against a real server process, and by raw HTTP for the spec's JSON shapes: health, metadata, inference,
errors; the answers equal /predict's for the same baskets; nothing a client sends gives a 5xx."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from retail_prediction.data.requests import long_form, sample_baskets

from .conftest import ApiProcess

httpclient = pytest.importorskip("tritonclient.http")
utils = pytest.importorskip("tritonclient.utils")

NAME = "retail-prediction"
N = 60


@pytest.fixture(scope="module")
def bodies(weeks: Any) -> list[dict[str, Any]]:
    return sample_baskets(weeks.later[-1], N, seed=11)


@pytest.fixture
def api(start_api: Callable[..., ApiProcess], model_path: Path) -> ApiProcess:
    proc = start_api(MODEL_URI=str(model_path), LOG_LEVEL="warning")
    proc.wait_ready()
    return proc


def _inputs(cols: dict[str, list[Any]], binary: bool) -> list[Any]:
    inputs = []
    for name, values in cols.items():
        numeric = name in ("quantity", "price")
        array = np.array(values, dtype=np.float64 if numeric else object)
        tensor = httpclient.InferInput(name, [len(values)], "FP64" if numeric else "BYTES")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_health_metadata_and_inference_equal_predict(api: ApiProcess, bodies: list[dict[str, Any]],
                                                                  binary: bool) -> None:
    client = httpclient.InferenceServerClient(api.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(NAME)
    classes = meta["parameters"]["classes"]
    version = meta["versions"][0]
    assert {i["name"] for i in meta["inputs"]} >= {"basket_id", "product_id", "quantity", "price"}
    assert [o["name"] for o in meta["outputs"]] == ["basket_id", "label", "probabilities"]

    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("basket_id", "label", "probabilities")]
    result = client.infer(NAME, _inputs(long_form(bodies), binary), outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == version
    ids = [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("basket_id").tolist()]
    assert ids == [f"b{i}" for i in range(N)]
    labels = [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("label").tolist()]
    proba = result.as_numpy("probabilities")
    assert proba.shape == (N, len(classes)) and proba.dtype == np.float32

    for i, body in enumerate(bodies):
        expected = api.http.post("/predict", json=body).json()
        assert labels[i] == expected["label"]
        assert proba[i] == pytest.approx([expected["probabilities"][c] for c in classes], abs=1e-6)


def test_tritonclient_default_outputs_are_binary_and_versions_route(api: ApiProcess,
                                                                    bodies: list[dict[str, Any]]) -> None:
    client = httpclient.InferenceServerClient(api.url.removeprefix("http://"))
    version = client.get_model_metadata(NAME)["versions"][0]
    result = client.infer(NAME, _inputs(long_form(bodies[:3]), True), model_version=version)
    assert result.as_numpy("probabilities").shape[0] == 3
    with pytest.raises(utils.InferenceServerException, match="version 'nope' is not loaded"):
        client.infer(NAME, _inputs(long_form(bodies[:3]), True), model_version="nope")
    with pytest.raises(utils.InferenceServerException, match="is not served here"):
        client.get_model_metadata("other-model")


def test_tritonclient_sees_validation_errors(api: ApiProcess, bodies: list[dict[str, Any]]) -> None:
    client = httpclient.InferenceServerClient(api.url.removeprefix("http://"))
    cols = long_form(bodies[:2])
    cols["price"][1] = -3.0
    with pytest.raises(utils.InferenceServerException, match="input 'price' element 1: must be a number greater"):
        client.infer(NAME, _inputs(cols, True))


def _raw(api: ApiProcess, payload: Any, headers: dict[str, str] | None = None, path: str = "") -> httpx.Response:
    content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return api.http.post(path or f"/v2/models/{NAME}/infer", content=content, headers=headers or {})


def _tensor(name: str, values: list[Any], datatype: str = "BYTES") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [len(values)], "data": values}


GOOD = [_tensor("basket_id", ["a", "a"]), _tensor("product_id", ["P1", "P2"]),
        _tensor("quantity", [1, 2], "INT32"), _tensor("price", [1.5, 2.5], "FP64")]


def test_raw_http_shapes_of_the_spec(api: ApiProcess) -> None:
    assert api.http.get("/v2/health/live").json() == {"live": True}
    assert api.http.get("/v2/health/ready").json() == {"ready": True}
    assert api.http.get(f"/v2/models/{NAME}/ready").json() == {"name": NAME, "ready": True}
    answer = _raw(api, {"inputs": GOOD})
    assert answer.status_code == 200
    out = {o["name"]: o for o in answer.json()["outputs"]}
    assert out["basket_id"] == {"name": "basket_id", "datatype": "BYTES", "shape": [1], "data": ["a"]}
    assert out["probabilities"]["shape"] == [1, 4] and len(out["probabilities"]["data"]) == 4
    nested = [{**t, "shape": [2, 1], "data": [[v] for v in t["data"]]} for t in GOOD]
    assert _raw(api, {"inputs": nested}).json()["outputs"] == answer.json()["outputs"]
    only = _raw(api, {"inputs": GOOD, "outputs": [{"name": "label"}]}).json()["outputs"]
    assert [o["name"] for o in only] == ["label"]


def _binary_body(tensors: list[tuple[str, str, bytes, int]]) -> tuple[bytes, dict[str, str]]:
    """The binary framing: `tensors` as binary data, the rest of GOOD's inputs as JSON."""
    sent = {n for n, *_ in tensors}
    head = {"inputs": [*({"name": n, "datatype": d, "shape": [count], "parameters": {"binary_data_size": len(raw)}}
                         for n, d, raw, count in tensors), *(t for t in GOOD if t["name"] not in sent)]}
    header = json.dumps(head).encode()
    return header + b"".join(raw for *_, raw, _ in tensors), {"Inference-Header-Content-Length": str(len(header))}


def _bytes(*values: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


@pytest.mark.parametrize(("payload", "headers", "says"), [
    (b"{not json", None, "not valid JSON"),
    ({"inputs": "x"}, None, "malformed inference request"),
    ({"inputs": GOOD[:3]}, None, "missing inference input(s): price"),
    ({"inputs": [*GOOD, _tensor("colour", ["r", "g"])]}, None, "unexpected inference input 'colour'"),
    ({"inputs": [*GOOD[:3], _tensor("price", [1.0], "FP64")]}, None, "input 'price' has 1 elements"),
    ({"inputs": [*GOOD[:3], _tensor("price", [1.0, "x"], "FP64")]}, None, "input 'price' element 1: must be a number"),
    ({"inputs": [*GOOD[:3], _tensor("price", [1.0, 2e6], "FP64")]}, None, "must be a number at most 1000000"),
    ({"inputs": [GOOD[0], _tensor("product_id", ["P1", "x" * 101]), *GOOD[2:]]}, None, "at most 100 characters"),
    ({"inputs": [GOOD[0], _tensor("product_id", ["P1", "9.94E+14"]), *GOOD[2:]]}, None, "spreadsheet-mangled"),
    ({"inputs": [*GOOD[:3], {**GOOD[3], "shape": [2, 2]}]}, None, "must be [n] or [n, 1]"),
    ({"inputs": [*GOOD[:3], {**GOOD[3], "datatype": "BOOL"}]}, None, "datatype BOOL must be one of"),
    ({"inputs": GOOD, "outputs": [{"name": "logits"}]}, None, "unexpected inference output 'logits'"),
    ({"inputs": GOOD}, {"Inference-Header-Content-Length": "99999"}, "is not a length within"),
    ({"inputs": GOOD}, {"Content-Encoding": "gzip"}, "Content-Encoding 'gzip' is not supported"),
    (_binary_body([("basket_id", "BYTES", _bytes(b"a") + b"\xff\xff", 1)]), "split", "bytes left after"),
    (_binary_body([("basket_id", "BYTES", struct.pack("<I", 1 << 30), 1)]), "split", "bytes declared"),
    (_binary_body([("basket_id", "BYTES", _bytes(b"\xff\xfe"), 1)]), "split", "not UTF-8 text"),
    (_binary_body([("basket_id", "BYTES", _bytes(b"a"), 10**30)]), "split", "cannot hold 10000000000000000000"),
    (_binary_body([("price", "FP64", b"\x00" * 12, 2)]), "split", "12 bytes of binary data for 2 FP64"),
    (b'{"inputs": [' + json.dumps(GOOD[:2])[1:-1].encode() + b', ' + json.dumps(GOOD[3]).encode()
     + b', {"name": "quantity", "datatype": "INT64", "shape": [2], "data": [1, 1' + b"0" * 400 + b"]}]}",
     None, "input 'quantity' element 1: must be a number at most 1000000"),
    (_binary_body([("price", "FP64", struct.pack("<2d", 1.0, float("nan")), 2)]), "split",
     "input 'price' element 1: must be a number greater than 0"),
    ({"inputs": [_tensor("basket_id", ["a", ""]), *GOOD[1:]]}, None, "input 'basket_id' element 1: must not be"),
    ({"inputs": [*GOOD, _tensor("category", ["x", "y" * 101])]}, None, "input 'category' element 1: must have at"),
], ids=lambda v: v if isinstance(v, str) and " " in v else "")
def test_what_a_client_sends_wrong_is_a_400_naming_it(api: ApiProcess, payload: Any, headers: Any,
                                                       says: str) -> None:
    if headers == "split":
        payload, headers = payload
    answer = _raw(api, payload, headers)
    assert answer.status_code == 400, answer.text
    assert says in answer.json()["error"]


def test_limits_of_predict_batch_hold(start_api: Callable[..., ApiProcess], model_path: Path) -> None:
    api = start_api(MODEL_URI=str(model_path), LOG_LEVEL="warning", MAX_BATCH_SIZE="2", MAX_BASKET_LINES="2",
                    MAX_BODY_BYTES="2048")
    api.wait_ready()
    three = [_tensor("basket_id", ["a", "b", "c"]), _tensor("product_id", ["P1", "P2", "P3"]),
             _tensor("quantity", [1, 1, 1], "FP64"), _tensor("price", [1.0, 1.0, 1.0], "FP64")]
    assert "more than 2 baskets" in _raw(api, {"inputs": three}).json()["error"]
    three[0]["data"] = ["a", "a", "a"]
    assert "more than 2 lines" in _raw(api, {"inputs": three}).json()["error"]
    big = _raw(api, {"inputs": GOOD, "pad": "x" * 4000})
    assert big.status_code == 413 and "2048-byte limit" in big.json()["error"]
    assert api.http.get("/v2/models/other/ready").status_code == 404


def test_not_ready_is_503(start_api: Callable[..., ApiProcess], tmp_path: Path) -> None:
    api = start_api(MODEL_URI=str(tmp_path / "missing.tar.gz"), LOG_LEVEL="warning")
    assert api.http.get("/v2/health/live").json() == {"live": True}
    ready = api.http.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert api.http.get(f"/v2/models/{NAME}/ready").status_code == 503
    answer = _raw(api, {"inputs": GOOD})
    assert answer.status_code == 503 and "no model loaded yet" in answer.json()["error"]
