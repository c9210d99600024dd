"""Drift gauges of a live app: later weeks' baskets read as stable, the same baskets at ten times the price
read as a major shift, on /metrics and /model/info; archives without a profile serve without the gauges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retail_prediction.artifact.archive import pack_artifact, read_artifact
from retail_prediction.data.requests import sample_baskets

from .conftest import metric_samples

WINDOW = 600


@pytest.fixture(scope="module")
def later(weeks: Any) -> list[dict[str, Any]]:
    return sample_baskets(weeks.later[-1], WINDOW)


def _scaled(bodies: list[dict[str, Any]], factor: float) -> list[dict[str, Any]]:
    return [{"basket_items": [{**line, "price": line["price"] * factor} for line in b["basket_items"]]}
            for b in bodies]


def test_later_weeks_read_stable_and_ten_times_the_price_reads_major(
        make_client: Callable[..., TestClient], model_path: Path, later: list[dict[str, Any]]) -> None:
    client = make_client(model_uri=str(model_path), drift_window_baskets=WINDOW)
    assert metric_samples(client, "drift")["retail_prediction_drift_window_baskets"] == 0
    for body in later:
        assert client.post("/predict", json=body).status_code == 200
    normal = metric_samples(client, "drift")
    assert normal["retail_prediction_drift_window_baskets"] == WINDOW
    inputs = {k: v for k, v in normal.items() if k.startswith("retail_prediction_input_drift_psi")}
    assert set(inputs) == {f"retail_prediction_input_drift_psi[{f}]"
                           for f in ("lines", "spend", "mean_unit_price", "unknown_share")}
    assert max(inputs.values()) < 0.1, normal
    assert normal["retail_prediction_prediction_drift_psi"] < 0.1

    shifted = _scaled(later, 10.0)
    for start in range(0, len(shifted), 100):  # the batch route feeds the same window
        assert client.post("/predict/batch", json={"baskets": shifted[start:start + 100]}).status_code == 200
    major = metric_samples(client, "drift")
    assert major["retail_prediction_input_drift_psi[spend]"] > 0.25
    assert major["retail_prediction_input_drift_psi[mean_unit_price]"] > 0.25
    assert major["retail_prediction_input_drift_psi[lines]"] < 0.1  # same baskets, same sizes

    info = client.get("/model/info").json()["drift"]
    assert info["window_baskets"] == WINDOW and info["input_psi"]["spend"] > 0.25
    assert len(info["reference"]["weeks"]) == 2 and "0.25" in info["reading"]


def test_no_gauges_without_a_profile_or_with_the_window_off(
        make_client: Callable[..., TestClient], model_path: Path, tmp_path: Path) -> None:
    files = dict(read_artifact(model_path).files)
    del files["profile.json"]
    old = tmp_path / "old.tar.gz"
    pack_artifact(old, files, metadata={"model_version": "before-drift"})
    for client in (make_client(model_uri=str(old)), make_client(model_uri=str(model_path), drift_window_baskets=0)):
        assert client.post("/predict", json={"basket_items": [{"product_id": "x", "quantity": 1, "price": 1}]}
                           ).status_code == 200
        assert metric_samples(client, "drift") == {}
        assert client.get("/model/info").json()["drift"] is None
