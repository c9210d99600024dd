"""POST /predict and /predict/batch on the real app and a real model: accepted forms, answers, errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.serving.predictor import Predictor


def _known_lines(model_path: Path, n: int = 3) -> list[dict[str, Any]]:
    examples = Predictor.load(model_path).example_products(n)
    return [{"product_id": e["product_id"], "quantity": 1, "price": e["price"]} for e in examples]


def test_reference_request_is_accepted(client: TestClient) -> None:
    response = client.post("/predict", json=EXAMPLE_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"label", "label_name", "probabilities", "model_version", "request_id",
                         "unknown_products", "unknown_categories"}
    assert body["label"] in {"LA", "MM", "UM", "XX"}
    assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    names = {"LA": "Less affluent", "MM": "Mid market", "UM": "Up market", "XX": "Unclassified"}
    assert names[body["label"]] == body["label_name"]
    # P1001/P2002 and grocery/electronics are not in the data set: counted, never an error.
    assert body["unknown_products"] == 2
    assert body["unknown_categories"] == 2
    assert response.headers["x-request-id"] == body["request_id"]
    assert body["customer_id"] == "CUST123"


def test_list_form_context_and_hierarchy(client: TestClient, model_path: Path) -> None:
    lines = _known_lines(model_path)
    example = Predictor.load(model_path).example_products(1)[0]
    codes = dict(zip(["prod_code_10", "prod_code_20", "prod_code_30", "prod_code_40"], example["hierarchy"],
                     strict=True))
    lines[0].update({k: v for k, v in codes.items() if v})
    context = {"store_format": "LS", "store_region": "E02", "hour": 18, "weekday": 3}
    response = client.post("/predict", json={"basket_items": lines, "context": context})
    assert response.status_code == 200, response.text
    assert response.json()["unknown_products"] == 0
    assert response.json()["unknown_categories"] == 0


def test_object_and_list_forms_agree(client: TestClient, model_path: Path) -> None:
    lines = _known_lines(model_path)
    as_list = client.post("/predict", json={"basket_items": lines}).json()
    as_object = client.post("/predict", json={"basket_items": {ln["product_id"]: ln for ln in lines}}).json()
    assert as_list["probabilities"] == pytest.approx(as_object["probabilities"], abs=1e-6)


def test_product_id_defaults_to_the_key(client: TestClient) -> None:
    response = client.post("/predict", json={"basket_items": {"PRD0900097": {"quantity": 1, "price": 2.0}}})
    assert response.status_code == 200, response.text


def test_client_request_id_is_echoed(client: TestClient) -> None:
    response = client.post("/predict", json=EXAMPLE_REQUEST, headers={"X-Request-ID": "abc-123"})
    assert response.json()["request_id"] == "abc-123" == response.headers["x-request-id"]
    for unsafe in ["x" * 129, "a b", 'a"}{']:
        forged = client.post("/predict", json=EXAMPLE_REQUEST, headers={"X-Request-ID": unsafe})
        assert forged.json()["request_id"] != unsafe


def test_batch_answers_in_order(client: TestClient, model_path: Path) -> None:
    single = [client.post("/predict", json=EXAMPLE_REQUEST).json()]
    lines = _known_lines(model_path)
    single.append(client.post("/predict", json={"basket_items": lines}).json())
    baskets = [EXAMPLE_REQUEST, {"basket_items": lines, "customer_id": "C2"}]
    response = client.post("/predict/batch", json={"baskets": baskets})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["customer_id"] for p in predictions] == ["CUST123", "C2"]
    for one, batched in zip(single, predictions, strict=True):
        assert batched["probabilities"] == pytest.approx(one["probabilities"], abs=1e-6)


def test_one_answer_shape(client: TestClient, model_path: Path) -> None:
    """An answer of /predict and an item of /predict/batch have the same fields: customer_id is null when
    the request has none."""
    basket = {"basket_items": _known_lines(model_path)}
    single = client.post("/predict", json=basket).json()
    batched = client.post("/predict/batch", json={"baskets": [basket]}).json()["predictions"][0]
    assert single["customer_id"] is None and batched["customer_id"] is None
    assert set(single) - {"model_version", "request_id"} == set(batched)


def test_batch_of_the_maximum_size(client: TestClient) -> None:
    response = client.post("/predict/batch", json={"baskets": [EXAMPLE_REQUEST] * 1000})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1000


def _with(path: str, value: Any) -> dict[str, Any]:
    """EXAMPLE_REQUEST with the value at a dotted path replaced ("DELETE" removes it)."""
    body = copy.deepcopy(EXAMPLE_REQUEST)
    *parents, last = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    if value == "DELETE":
        del node[last]
    else:
        node[last] = value
    return body


BAD_REQUESTS: list[tuple[str, Any, str]] = [
    ("missing basket", _with("basket_items", "DELETE"), "basket_items"),
    ("empty basket", _with("basket_items", {}), "basket_items"),
    ("empty list", _with("basket_items", []), "basket_items"),
    ("basket is a string", _with("basket_items", "P1001"), "basket_items"),
    ("quantity zero", _with("basket_items.P1001.quantity", 0), "basket_items.P1001.quantity"),
    ("quantity negative", _with("basket_items.P1001.quantity", -2), "basket_items.P1001.quantity"),
    ("quantity as text", _with("basket_items.P1001.quantity", "2"), "basket_items.P1001.quantity"),
    ("quantity boolean", _with("basket_items.P1001.quantity", True), "basket_items.P1001.quantity"),
    ("price missing", _with("basket_items.P2002.price", "DELETE"), "basket_items.P2002.price"),
    ("price zero", _with("basket_items.P2002.price", 0), "basket_items.P2002.price"),
    ("price negative", _with("basket_items.P2002.price", -1.5), "basket_items.P2002.price"),
    ("price huge", _with("basket_items.P2002.price", 1e300), "basket_items.P2002.price"),
    ("price null", _with("basket_items.P2002.price", None), "basket_items.P2002.price"),
    ("category number", _with("basket_items.P1001.category", 5), "basket_items.P1001.category"),
    ("long product id", _with("basket_items.P1001.product_id", "P" * 101), "basket_items.P1001.product_id"),
    ("long customer id", _with("customer_id", "C" * 101), "customer_id"),
    ("unknown field", _with("basket_items.P1001.colour", "red"), "basket_items.P1001.colour"),
    ("id mismatch", _with("basket_items.P1001.product_id", "P9"), "basket_items"),
    ("bad hour", _with("context", {"hour": 24}), "context.hour"),
    ("bad weekday", _with("context", {"weekday": 0}), "context.weekday"),
    ("spreadsheet id", _with("basket_items.P1001.product_id", "9.94E+14"), "basket_items.P1001.product_id"),
    ("body is a list", [EXAMPLE_REQUEST], "body"),
    ("list form: quantity zero", {"basket_items": [{"product_id": "P1", "quantity": 0, "price": 1}]},
     "basket_items.0.quantity"),
    ("list form: price missing", {"basket_items": [{"product_id": "P1", "quantity": 1}]}, "basket_items.0.price"),
    ("list form: spreadsheet id", {"basket_items": [{"product_id": "9.94E+14", "quantity": 1, "price": 1}]},
     "basket_items.0.product_id"),
    ("spreadsheet key", {"basket_items": {"9.94E+14": {"quantity": 1, "price": 1}}}, "basket_items.9.94E+14"),
    ("long key", {"basket_items": {"P" * 101: {"quantity": 1, "price": 1}}}, "basket_items." + "P" * 101),
    ("second line bad", _with("basket_items.P2002.price", "1"), "basket_items.P2002.price"),
    ("unknown context field", _with("context", {"mood": "happy"}), "context.mood"),
    ("out-of-range number", b'{"basket_items": {"P1": {"quantity": 1, "price": 1}, "P2": {"quantity": 1e999, '
                            b'"price": 1}}}', "basket_items.P2.quantity"),
    ("empty key", {"basket_items": {"": {"quantity": 1, "price": 1}}}, 'basket_items.""'),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_is_a_422_naming_the_field(client: TestClient, case: str, body: Any, field: str) -> None:
    if isinstance(body, bytes):  # what a JSON encoder cannot write, e.g. a number beyond a float's range
        response = client.post("/predict", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/predict", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert "`" not in error["message"] and "Expected" not in error["message"]  # plain words, not msgspec's


PLAIN_WORDS: list[tuple[Any, str]] = [
    ({"basket_items": [{"product_id": "P1", "quantity": 1, "price": 1}, {"product_id": "P2", "quantity": 0,
                                                                        "price": 1}]},
     "basket_items.1.quantity: must be a number greater than 0"),
    (_with("basket_items.P2002.price", 1e7), "basket_items.P2002.price: must be a number at most 1000000"),
    (_with("basket_items.P1001.quantity", "2"), "basket_items.P1001.quantity: must be a number, not a string"),
    (_with("basket_items.P2002.price", "DELETE"), "basket_items.P2002.price: is required"),
    (_with("basket_items.P1001.colour", "red"), "basket_items.P1001.colour: is not a known field"),
    (_with("basket_items", []), "basket_items: must not be empty"),
    (_with("basket_items", "P1"), "basket_items: must be an object or a list, not a string"),
    (_with("context", {"hour": 2.5}), "context.hour: must be a whole number, not a number with a fraction"),
    (_with("customer_id", "C" * 101), "customer_id: must have at most 100 characters"),
]


@pytest.mark.parametrize(("body", "message"), PLAIN_WORDS, ids=[m.partition(":")[0] for _, m in PLAIN_WORDS])
def test_error_messages_in_plain_words(client: TestClient, body: Any, message: str) -> None:
    error = client.post("/predict", json=body).json()["error"]
    field, _, words = message.partition(": ")
    assert error["message"] == message
    assert error["details"][0]["field"] == field and error["details"][0]["message"] == words


ACCEPTED_TYPES = ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8",
                  'application/json; charset="utf-8"']
REFUSED_TYPES = [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonp",
                 "application/json; charset=latin-1", "application/json; version=2", "multipart/form-data"]


@pytest.mark.parametrize("content_type", ACCEPTED_TYPES + REFUSED_TYPES)
@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_the_body_must_be_declared_json(client: TestClient, path: str, content_type: str | None) -> None:
    basket = json.dumps(EXAMPLE_REQUEST if path == "/predict" else {"baskets": [EXAMPLE_REQUEST]}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post(path, content=basket, headers=headers)
    if content_type in ACCEPTED_TYPES:
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    assert error["details"] == {"content_type": content_type}


MALFORMED = [b"", b"{", b"nope", b"\xff\xfe", b'{"basket_items": {"P1": {"quantity": NaN, "price": 1}}}',
             b'{"basket_items": {"P1": {"quantity": Infinity, "price": 1}}}']


@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_json_is_a_422(client: TestClient, raw: bytes) -> None:
    response = client.post("/predict", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert "Traceback" not in response.text


def test_too_many_lines(make_client: Callable[..., TestClient], model_path: Path) -> None:
    client = make_client(model_uri=str(model_path), max_basket_lines=3)
    lines = [{"product_id": f"P{i}", "quantity": 1, "price": 1.0} for i in range(4)]
    response = client.post("/predict", json={"basket_items": lines})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "basket_items"
    assert response.json()["error"]["message"] == "basket_items: must have at most 3 items"
    assert client.post("/predict", json={"basket_items": lines[:3]}).status_code == 200


def test_batch_limits(make_client: Callable[..., TestClient], model_path: Path) -> None:
    client = make_client(model_uri=str(model_path), max_batch_size=2)
    over = client.post("/predict/batch", json={"baskets": [EXAMPLE_REQUEST] * 3})
    assert over.status_code == 422 and over.json()["error"]["details"][0]["field"] == "baskets"
    assert client.post("/predict/batch", json={"baskets": []}).status_code == 422
    bad = client.post("/predict/batch", json={"baskets": [EXAMPLE_REQUEST, _with("basket_items", {})]})
    assert bad.json()["error"]["details"][0]["field"] == "baskets.1.basket_items"
    bad = client.post("/predict/batch", json={"baskets": [EXAMPLE_REQUEST, _with("basket_items.P2002.price", -1)]})
    assert bad.json()["error"]["details"][0]["field"] == "baskets.1.basket_items.P2002.price"


def test_body_over_the_limit_is_a_413(make_client: Callable[..., TestClient], model_path: Path) -> None:
    client = make_client(model_uri=str(model_path), max_body_bytes=2048)
    lines = [{"product_id": f"P{i}", "quantity": 1, "price": 1} for i in range(100)]
    big = json.dumps({"basket_items": lines})
    response = client.post("/predict", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"

    # No Content-Length (chunked upload): the limit holds on the bytes actually read.
    def chunks() -> Any:
        yield big.encode()

    chunked = client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert client.post("/predict", json=EXAMPLE_REQUEST).status_code == 200


def test_unknown_route_and_method(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_503_while_no_model(make_client: Callable[..., TestClient], tmp_path: Path) -> None:
    client = make_client(wait_ready=False, model_uri=str(tmp_path / "absent.tar.gz"))
    response = client.post("/predict", json=EXAMPLE_REQUEST)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_not_ready"
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and "absent.tar.gz" in ready.json()["error"]["message"]
    assert client.get("/model/info").status_code == 503


def test_a_failure_inside_scoring_is_the_uniform_500(client: TestClient) -> None:
    """/predict answers its own errors (`LeanRoute`), outside FastAPI's exception middleware: it must still
    answer with the error body and the request id, log the trace server-side and keep serving."""
    predictor = client.app.state.service.manager.current.predictor  # type: ignore[attr-defined]

    def broken(*args: Any) -> Any:
        raise RuntimeError("secret internal detail")

    predictor.score = broken
    try:
        response = client.post("/predict", json=EXAMPLE_REQUEST, headers={"X-Request-ID": "boom-1"})
    finally:
        del predictor.score
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"] == "boom-1"
    assert client.post("/predict", json=EXAMPLE_REQUEST).status_code == 200


def test_lean_routes_are_the_documented_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/health", "/ready", "/model/info", "/metrics"} <= set(paths)
    assert client.head("/health").status_code == 200
    assert client.post("/predict/", json=EXAMPLE_REQUEST).status_code in (200, 307)
    assert client.get("/predict").status_code == 405
