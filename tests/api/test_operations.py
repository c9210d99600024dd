"""Probes, /model/info, /metrics, JSON logs, CORS, the prediction cache and the settings."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from retail_prediction.api import Settings
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.serving.predictor import Predictor
from retail_prediction.serving.settings import DEFAULT_LOCAL_MODEL


def test_probes(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["model_version"]


def test_model_info(make_client: Callable[..., TestClient], model_path: Path) -> None:
    client = make_client(model_uri=str(model_path), git_commit="abc123", git_branch="main",
                         build_date="2026-11-26T00:00:00Z")
    info = client.get("/model/info").json()
    predictor = Predictor.load(model_path)
    assert info["model_version"] == predictor.version
    assert info["sha256"] == predictor.sha256
    assert info["source_uri"] == str(model_path)
    assert info["loaded_at"] and info["source_version"]
    assert info["training"]["weeks"] == predictor.metadata["training"]["weeks"]
    assert info["validation"]["macro_f1"] > 0
    assert [c["label"] for c in info["classes"]] == list(predictor.classes)
    assert info["features"]["model_inputs"] == predictor.feature_names
    assert set(info["features"]["unused_context"]) == {"store_format", "store_region", "hour", "weekday"}
    assert info["build"] == {"commit": "abc123", "branch": "main", "date": "2026-11-26T00:00:00Z"}
    assert info["example_products"]


def test_metrics(client: TestClient) -> None:
    client.post("/predict", json=EXAMPLE_REQUEST)
    client.post("/predict", json={"basket_items": []})
    text = client.get("/metrics").text
    assert 'retail_prediction_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'retail_prediction_http_requests_total{method="POST",route="/predict",status="422"} 1.0' in text
    assert 'retail_prediction_http_request_duration_seconds_bucket{le="0.01",route="/predict"}' in text
    assert "retail_prediction_predictions_total{label=" in text
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert names and all(name.startswith("retail_prediction_") for name in names), names  # one prefix
    assert 'retail_prediction_model_loads_total{kind="initial",result="success"} 1.0' in text
    assert "retail_prediction_model_info{sha256=" in text
    assert "retail_prediction_model_ready 1.0" in text


def test_reference_pages_are_served_by_the_app(client: TestClient) -> None:
    """/docs and /redoc load nothing from elsewhere (the browser test renders them offline), and the
    documentation's requests are counted under their own routes, not `unmatched`."""
    for path, assets in (("/docs", ["swagger-ui-bundle.js", "swagger-ui.css"]), ("/redoc", ["redoc.standalone.js"])):
        page = client.get(path)
        assert page.status_code == 200 and "https://" not in page.text and "http://" not in page.text
        for asset in assets:
            assert f'"/docs/assets/{asset}"' in page.text
            assert client.get(f"/docs/assets/{asset}").status_code == 200
    assert client.get("/static/favicon.svg").headers["content-type"].startswith("image/svg+xml")
    client.get("/openapi.json")
    text = client.get("/metrics").text
    for route in ("/docs", "/redoc", "/openapi.json", "/docs/assets", "/static"):
        assert f'retail_prediction_http_requests_total{{method="GET",route="{route}",status="200"}}' in text, route
    assert 'route="unmatched"' not in text


def _log_records(capsys: pytest.CaptureFixture[str], request_id: str) -> list[dict[str, Any]]:
    """The JSON log records of one request; access lines are written in groups, within a few ms."""
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        records += [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        if any(r.get("logger") == "retail_prediction.access" and r.get("request_id") == request_id
               for r in records):
            break
        time.sleep(0.01)
    return [r for r in records if r.get("request_id") == request_id]


def test_json_access_log(client: TestClient, capsys: pytest.CaptureFixture[str]) -> None:
    client.post("/predict", json=EXAMPLE_REQUEST, headers={"X-Request-ID": "log-me"})
    access = _log_records(capsys, "log-me")
    assert access
    record = access[0]
    assert record["route"] == "/predict" and record["status"] == 200 and record["latency_ms"] > 0
    assert record["model_version"]
    assert "P1001" not in json.dumps(access)  # basket contents only at debug level


def test_basket_contents_only_at_debug(make_client: Callable[..., TestClient], model_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    client = make_client(model_uri=str(model_path), log_level="debug")
    client.post("/predict", json=EXAMPLE_REQUEST, headers={"X-Request-ID": "debug-me"})
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    baskets = [r for r in records if r.get("message") == "basket" and r.get("request_id") == "debug-me"]
    assert baskets and baskets[0]["basket"]["basket_items"]["P1001"]["price"] == 10.99


def test_no_cors_by_default(client: TestClient) -> None:
    response = client.options("/predict", headers={"Origin": "https://shop.example",
                                                   "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_when_configured(make_client: Callable[..., TestClient], model_path: Path) -> None:
    client = make_client(model_uri=str(model_path), cors_origins=["https://shop.example"])
    response = client.post("/predict", json=EXAMPLE_REQUEST, headers={"Origin": "https://shop.example"})
    assert response.headers["access-control-allow-origin"] == "https://shop.example"


def test_cache_hits_reordered_baskets(make_client: Callable[..., TestClient], model_path: Path) -> None:
    client = make_client(model_uri=str(model_path), cache_size=16)
    first = client.post("/predict", json=EXAMPLE_REQUEST).json()
    reordered = {"basket_items": dict(reversed(EXAMPLE_REQUEST["basket_items"].items()))}
    second = client.post("/predict", json=reordered).json()
    assert second["probabilities"] == first["probabilities"]
    assert second["request_id"] != first["request_id"]
    text = client.get("/metrics").text
    assert "retail_prediction_prediction_cache_hits_total 1.0" in text
    assert "retail_prediction_prediction_cache_misses_total 1.0" in text


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PORT": "9000", "WORKERS": "2", "CORS_ORIGINS": "https://a.example, https://b.example",
           "MODEL_BUCKET": "models", "MODEL_KEY": "prod/model.tar.gz", "MAX_BATCH_SIZE": "10",
           "MODEL_URI": ""}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.port, settings.workers, settings.max_batch_size) == (9000, 2, 10)
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.model_source().uri == "s3://models/prod/model.tar.gz"


def test_default_model_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("MODEL_URI", "MODEL_BUCKET", "MODEL_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings().model_source().path == tmp_path / DEFAULT_LOCAL_MODEL
    with pytest.raises(ValueError, match="together"):
        Settings(model_bucket="models").model_source()


def test_serving_imports_no_training_stack() -> None:
    """The image carries only the runtime dependencies: serving must not import the training stack."""
    code = ("import sys, retail_prediction.serve, retail_prediction.api.app\n"
            "heavy = [m for m in ('pyarrow', 'sklearn', 'lightgbm', 'onnx', 'matplotlib', 'scipy', 'skl2onnx')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
