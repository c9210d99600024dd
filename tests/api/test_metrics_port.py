"""METRICS_PORT: `/metrics` and `/model/info` on a port of their own, served by the same process (a real
server process here), and 404 on the public port, which carries the prediction routes, probes and page."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from retail_prediction.api.schemas import EXAMPLE_REQUEST

from .conftest import ApiProcess, free_port

KEY = "scraper-is-not-a-caller-0123"


def test_operations_routes_only_on_the_internal_port(start_api: Callable[..., ApiProcess], model_path: Path,
                                                     tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"client:{KEY}\n")
    port = free_port()
    api = start_api(MODEL_URI=str(model_path), METRICS_PORT=str(port), AUTH_MODE="keys", AUTH_KEYS_FILE=str(keys))
    api.wait_ready()
    auth = {"Authorization": f"Bearer {KEY}"}
    assert api.http.post("/predict", json=EXAMPLE_REQUEST, headers=auth).status_code == 200
    for path in ("/metrics", "/model/info"):
        answer = api.http.get(path, headers=auth)
        assert answer.status_code == 404, path
        assert answer.json()["error"] == {"code": "not_found", "message": f"no such endpoint: GET {path}",
                                          "details": None}
    for path in ("/health", "/ready", "/", "/docs"):
        assert api.http.get(path).status_code == 200, path
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as internal:
        # no key on the internal port: the NetworkPolicy lets only the scraper reach it
        metrics = internal.get("/metrics")
        assert metrics.status_code == 200
        assert 'retail_prediction_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in metrics.text
        assert 'retail_prediction_caller_requests_total{caller="client"} 3.0' in metrics.text  # /predict, two 404s
        assert internal.get("/model/info").json()["model_version"]
        assert internal.head("/metrics").status_code == 200
        assert internal.post("/predict", json=EXAMPLE_REQUEST).status_code == 404
        assert internal.get("/docs").status_code == 404 and internal.get("/openapi.json").status_code == 404
    assert api.terminate() == 0, api.log()
    with socket.socket() as probe:  # both ports are closed once the process is gone
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_taken_internal_port_stops_the_start(start_api: Callable[..., ApiProcess], model_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(AssertionError, match="server exited") as failed:
            start_api(MODEL_URI=str(model_path), METRICS_PORT=str(taken.getsockname()[1]))
    assert "address already in use" in str(failed.value).lower()


def test_metrics_port_equal_to_port_is_refused() -> None:
    from pydantic import ValidationError

    from retail_prediction.api import Settings

    with pytest.raises(ValidationError, match="METRICS_PORT must differ from PORT"):
        Settings(port=8000, metrics_port=8000)
    with pytest.raises(ValidationError, match="WORKERS=1"):
        Settings(metrics_port=9100, workers=2)
