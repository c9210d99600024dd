"""`?explain=true` on a real server process over a real socket: what an explanation says, and that without it
nothing changes."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retail_prediction.serving.predictor import Predictor

from .conftest import ApiProcess


@pytest.fixture(scope="module")
def api(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    folder = tmp_path_factory.mktemp("explain")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AWS_"))}
    env.update({"MODEL_URI": str(model_path), "MODEL_POLL_SECONDS": "0", "MODEL_DIR": str(folder / "models"),
                "LOG_LEVEL": "warning"})
    proc = ApiProcess(env, folder / "api.log")
    proc.wait_ready()
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def examples(model_path: Path) -> list[dict[str, Any]]:
    return Predictor.load(model_path).example_products(40)


def _line(example: dict[str, Any]) -> dict[str, Any]:
    return {"product_id": example["product_id"], "quantity": 1, "price": example["price"]}


def _predict(api: ApiProcess, lines: list[dict[str, Any]], query: str = "?explain=true") -> dict[str, Any]:
    response = api.http.post(f"/predict{query}", json={"basket_items": lines})
    assert response.status_code == 200, response.text
    return response.json()


def _without(body: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in keys}


def test_without_explain_the_answer_is_unchanged(api: ApiProcess, examples: list[dict[str, Any]]) -> None:
    lines = [_line(e) for e in examples[:3]]
    plain = _predict(api, lines, "")
    assert "explanation" not in plain
    assert _without(_predict(api, lines, "?explain=false"), "request_id") == _without(plain, "request_id")
    explained = _predict(api, lines)
    assert _without(explained, "request_id", "explanation") == _without(plain, "request_id")


def test_a_bad_explain_value_is_a_422_naming_it(api: ApiProcess, examples: list[dict[str, Any]]) -> None:
    for path, body in (("/predict", {"basket_items": [_line(examples[0])]}),
                       ("/predict/batch", {"baskets": [{"basket_items": [_line(examples[0])]}]})):
        for query in ("explain=maybe", "explain=", "explain=true&explain=false"):
            response = api.http.post(f"{path}?{query}", json=body)
            assert response.status_code == 422, (path, query, response.text)
            error = response.json()["error"]
            assert error["details"][0]["field"] == "explain"
            assert error["message"].startswith("explain:")


def test_openapi_documents_the_parameter(api: ApiProcess) -> None:
    paths = api.http.get("/openapi.json").json()["paths"]
    for path in ("/predict", "/predict/batch"):
        (param,) = [p for p in paths[path]["post"]["parameters"] if p["name"] == "explain"]
        assert param["in"] == "query" and param["schema"]["type"] == "boolean"


def test_one_known_product_is_explained_by_that_product(api: ApiProcess, examples: list[dict[str, Any]]) -> None:
    body = _predict(api, [_line(examples[0])])
    why = body["explanation"]
    (line,) = why["lines"]
    assert line["product_id"] == examples[0]["product_id"]
    assert line["known"] is True and line["source"] == "product"
    assert why["class"] == body["label"] == line["points_to"]
    assert line["contribution"] == pytest.approx(why["evidence"] - why["prior"]) and line["contribution"] > 0
    assert why["drivers_for"] == [{"line": 0, "product_id": line["product_id"], "contribution": line["contribution"]}]
    assert why["drivers_against"] == []


def test_swapping_lines_moves_the_attribution_as_the_prediction(api: ApiProcess,
                                                                examples: list[dict[str, Any]]) -> None:
    by_class: dict[str, list[dict[str, Any]]] = {}
    for e in examples:
        by_class.setdefault(e["likely_class"], []).append(e)
    home, other = [c for c, _ in Counter(e["likely_class"] for e in examples).most_common(2)]
    lines = [_line(e) for e in by_class[home][:3]]
    before = _predict(api, lines)
    assert before["label"] == home
    for swap in (2, 1, 0):  # one line after another becomes a product of the other class
        lines[swap] = _line(by_class[other][swap])
        after = _predict(api, lines)
        new_line = after["explanation"]["lines"][swap]
        assert new_line["points_to"] == other
        assert after["probabilities"][home] <= before["probabilities"][home]  # trees are flat in places
        if after["label"] == home:  # less evidence for home, and the new line pulls against it
            assert after["explanation"]["evidence"] < before["explanation"]["evidence"]
            assert new_line["contribution"] < 0 < before["explanation"]["lines"][swap]["contribution"]
            assert swap in [d["line"] for d in after["explanation"]["drivers_against"]]
        else:  # the prediction moved to the other class, and the other class's lines drive it
            assert after["label"] == other
            assert after["explanation"]["drivers_for"][0]["line"] in range(swap, 3)
        before = after
    assert before["label"] == other
    assert sorted(d["line"] for d in before["explanation"]["drivers_for"]) == [0, 1, 2]


def test_unknown_products_say_which_fallback_they_used(api: ApiProcess, model_path: Path,
                                                       examples: list[dict[str, Any]]) -> None:
    levels = [lv.name for lv in Predictor.load(model_path).tables.levels]
    codes = next(e["hierarchy"] for e in examples if all(e["hierarchy"]))
    lines = [
        {"product_id": "NEVER-SEEN-1", "quantity": 1, "price": 2.0, "prod_code_10": codes[0]},
        {"product_id": "NEVER-SEEN-2", "quantity": 1, "price": 2.0, "prod_code_40": codes[-1]},
        {"product_id": "NEVER-SEEN-3", "quantity": 1, "price": 2.0, "category": codes[1]},
        {"product_id": "NEVER-SEEN-4", "quantity": 1, "price": 2.0},
        {"product_id": "NEVER-SEEN-5", "quantity": 1, "price": 2.0, "category": "no such category"},
    ]
    why = _predict(api, lines)["explanation"]
    assert [line["source"] for line in why["lines"]] == [
        f"hierarchy:{levels[1]}", f"hierarchy:{levels[-1]}", f"hierarchy:{levels[2]}", "price_band", "price_band"]
    assert not any(line["known"] for line in why["lines"])
    assert sum(line["contribution"] for line in why["lines"]) == pytest.approx(why["evidence"] - why["prior"])


def test_batch_explains_each_basket_as_predict_does(api: ApiProcess, examples: list[dict[str, Any]]) -> None:
    baskets = [[_line(e) for e in examples[i:i + 3]] for i in range(0, 12, 3)]
    response = api.http.post("/predict/batch?explain=1", json={"baskets": [{"basket_items": b} for b in baskets]})
    assert response.status_code == 200, response.text
    for prediction, lines in zip(response.json()["predictions"], baskets, strict=True):
        single = _predict(api, lines)
        assert prediction["explanation"] == single["explanation"]  # a basket's bits do not depend on its batch
        assert prediction["label"] == single["label"] == prediction["explanation"]["class"]
    plain = api.http.post("/predict/batch", json={"baskets": [{"basket_items": b} for b in baskets]}).json()
    assert all("explanation" not in p for p in plain["predictions"])
