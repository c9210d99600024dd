"""AUTH_MODE=keys: bearer keys from a mounted file. Right, wrong, missing, malformed; the open paths; a
keys file that is broken or missing; keys rotated by a Kubernetes-style symlink swap while a real server
process is under load; the constant-time compare; the caller in the access line and the metrics."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from retail_prediction.api import auth_keys
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.serving.metrics import AuthMetrics

from .conftest import ApiProcess, wait_until

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-fedcba9876543210"
CHALLENGE = 'Bearer realm="retail-prediction"'


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"# callers of the API\nalice:{ALICE}\n\nbob: {BOB}\n")
    return path


@pytest.fixture
def keyed(make_client: Callable[..., TestClient], model_path: Path, keys_file: Path) -> TestClient:
    return make_client(model_uri=str(model_path), auth_mode="keys", auth_keys_file=str(keys_file))


def assert_refused(response: httpx.Response, reason: str, challenge: str = CHALLENGE) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and error["details"] == {"reason": reason}
    assert error["message"] and "Traceback" not in response.text


def test_right_key_passes_wrong_or_missing_is_refused(keyed: TestClient) -> None:
    assert keyed.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(ALICE)).status_code == 200
    assert keyed.post("/predict/batch", json={"baskets": [EXAMPLE_REQUEST]}, headers=bearer(BOB)).status_code == 200
    invalid = f'{CHALLENGE}, error="invalid_token"'
    assert_refused(keyed.post("/predict", json=EXAMPLE_REQUEST), "missing")
    assert_refused(keyed.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(ALICE[:-1] + "X")), "invalid_key",
                   invalid)
    assert_refused(keyed.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(ALICE + "x")), "invalid_key", invalid)
    assert_refused(keyed.post("/predict", json=EXAMPLE_REQUEST, headers={"Authorization": f"Basic {ALICE}"}),
                   "malformed", invalid)
    assert_refused(keyed.post("/predict", json=EXAMPLE_REQUEST, headers={"Authorization": "Bearer "}),
                   "malformed", invalid)
    assert_refused(keyed.post("/predict", json=EXAMPLE_REQUEST, headers={"Authorization": "Bearer " + "k" * 9000}),
                   "malformed", invalid)
    assert_refused(keyed.post("/predict", json=EXAMPLE_REQUEST,
                              headers={"Authorization": "Bearer cl\u00e9-key-0123456789".encode()}),  # type: ignore[dict-item]
                   "malformed", invalid)
    # the operations routes are closed too, and so is anything not known (no route list to probe)
    for path in ("/model/info", "/metrics", "/v2/models/retail/infer", "/no-such-thing"):
        assert_refused(keyed.get(path), "missing")
    assert keyed.get("/model/info", headers=bearer(ALICE)).json()["model_version"]
    assert keyed.get("/no-such-thing", headers=bearer(ALICE)).status_code == 404


def test_cors_preflight_needs_no_key_and_a_refusal_is_readable(make_client: Callable[..., TestClient],
                                                               model_path: Path, keys_file: Path) -> None:
    """CORS sits outside authentication: a browser's preflight (which never carries credentials) is answered,
    and a 401 carries the CORS headers, so the page's script can read why it was refused."""
    client = make_client(model_uri=str(model_path), auth_mode="keys", auth_keys_file=str(keys_file),
                         cors_origins="https://shop.example.com")
    origin = {"Origin": "https://shop.example.com"}
    preflight = client.options("/predict", headers={**origin, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    refused = client.post("/predict", json=EXAMPLE_REQUEST, headers=origin)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://shop.example.com"
    allowed = client.post("/predict", json=EXAMPLE_REQUEST, headers={**origin, **bearer(ALICE)})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == origin["Origin"]


def test_websockets_are_refused(keyed: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect) as refused, keyed.websocket_connect("/predict"):
        pass
    assert refused.value.code == 1008


def test_probes_page_and_documentation_stay_open(keyed: TestClient) -> None:
    for path in ("/health", "/ready", "/v2/health/live", "/v2/health/ready", "/", "/docs", "/redoc",
                 "/openapi.json", "/static/favicon.svg", "/docs/assets/swagger-ui.css"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.head("/ready").status_code == 200
    # The inference protocol's other routes are prediction routes: closed like /predict.
    for path in ("/v2", "/v2/models/retail-prediction", "/v2/models/retail-prediction/ready"):
        assert keyed.get(path).status_code == 401, path
    assert keyed.post("/v2/models/retail-prediction/infer", json={"inputs": []}).status_code == 401


def test_the_reference_offers_the_bearer_scheme(keyed: TestClient) -> None:
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearer"][
            "description"]}
    assert schema["paths"]["/predict"]["post"]["security"] == [{"bearer": []}]
    assert "401" in schema["paths"]["/predict"]["post"]["responses"]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_caller_labels_are_bounded() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    metrics = AuthMetrics(registry, max_callers=3)
    for n in range(1000):
        metrics.count_caller(f"svc-{n % 500}")
    text = generate_latest(registry).decode()
    series = [line for line in text.splitlines() if line.startswith("retail_prediction_caller_requests_total{")]
    assert sorted(series) == ['retail_prediction_caller_requests_total{caller="other"} 994.0',
                              'retail_prediction_caller_requests_total{caller="svc-0"} 2.0',
                              'retail_prediction_caller_requests_total{caller="svc-1"} 2.0',
                              'retail_prediction_caller_requests_total{caller="svc-2"} 2.0']
    assert len(metrics._callers) <= 12, "the lookup table is bounded too"


def test_refusals_and_callers_are_counted(keyed: TestClient) -> None:
    keyed.post("/predict", json=EXAMPLE_REQUEST)
    keyed.post("/predict", json=EXAMPLE_REQUEST, headers=bearer("wrong-key-but-long-enough"))
    for _ in range(2):
        keyed.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(ALICE))
    text = keyed.get("/metrics", headers=bearer(BOB)).text
    assert 'retail_prediction_auth_failures_total{reason="missing"} 1.0' in text
    assert 'retail_prediction_auth_failures_total{reason="invalid_key"} 1.0' in text
    assert 'retail_prediction_caller_requests_total{caller="alice"} 2.0' in text
    assert 'retail_prediction_caller_requests_total{caller="bob"} 1.0' in text
    assert "retail_prediction_auth_keys 2.0" in text
    # the refusals are counted under the route that was asked for
    assert 'retail_prediction_http_requests_total{method="POST",route="/predict",status="401"} 2.0' in text
    assert ALICE not in text and BOB not in text


def test_caller_in_the_access_line_and_no_key_in_any_line(keyed: TestClient,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    keyed.post("/predict", json=EXAMPLE_REQUEST, headers={**bearer(ALICE), "X-Request-ID": "who-1"})
    keyed.post("/predict", json=EXAMPLE_REQUEST, headers={**bearer(ALICE + "x"), "X-Request-ID": "who-2"})
    records: list[dict[str, Any]] = []

    def both_logged() -> bool:
        records.extend(json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{"))
        return {"who-1", "who-2"} <= {r.get("request_id") for r in records}

    wait_until(both_logged, 5, "the two access lines")
    lines = {r["request_id"]: r for r in records if r.get("logger") == "retail_prediction.access"}
    assert lines["who-1"]["caller"] == "alice" and lines["who-1"]["status"] == 200
    assert "caller" not in lines["who-2"] and lines["who-2"]["status"] == 401
    assert ALICE not in json.dumps(records)


def test_every_key_is_compared_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check compares the presented key's digest with every known digest by hmac.compare_digest (equal
    lengths, so each compare takes the same time) and never stops at a match."""
    path = tmp_path / "keys"
    path.write_text("".join(f"k{i}:key-number-{i}-0123456789\n" for i in range(5)))
    store = auth_keys.KeyStore(path, AuthMetrics(__import__("prometheus_client").CollectorRegistry(), 10))
    calls: list[tuple[int, int]] = []
    real = auth_keys.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_keys.hmac, "compare_digest", counting)
    for key, name in [("key-number-0-0123456789", "k0"), ("key-number-4-0123456789", "k4"), ("nope" * 5, None),
                      ("k", None), ("x" * 5000, None)]:  # fmt: skip
        calls.clear()
        assert store.caller(key) == name
        assert calls == [(32, 32)] * 5


@pytest.mark.parametrize(("text", "line"), [
    ("alice:short\n", 1), ("ok:0123456789abcdef0123\nno colon here\n", 2), ("a b:0123456789abcdef\n", 1),
    ("a:0123456789abcdef\na:fedcba9876543210\n", 2), ("# nothing\n\n", None),
])  # fmt: skip
def test_a_malformed_file_is_named_with_its_line(text: str, line: int | None) -> None:
    with pytest.raises(auth_keys.KeyFileError) as raised:
        auth_keys.parse_keys(text, "/keys")
    assert str(raised.value).startswith("/keys" + (f", line {line}:" if line else ":"))
    assert "0123456789abcdef" not in str(raised.value)  # never a key in a message


def test_a_broken_file_keeps_the_keys_in_use(keyed: TestClient, keys_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    keys_file.write_text(f"alice:{ALICE}\nbob {BOB}\n")
    wait_until(lambda: "retail_prediction_auth_key_file_errors_total 1.0" in keyed.get(
        "/metrics", headers=bearer(ALICE)).text, 10, "the broken file to be noticed")
    assert keyed.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(BOB)).status_code == 200
    assert keyed.get("/ready").status_code == 200
    errors = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"level":"error"' in line]
    assert any(f"{keys_file}, line 2:" in e["message"] and "stay in use" in e["message"] for e in errors), errors
    assert BOB not in json.dumps(errors)


def test_a_missing_file_fails_closed_until_it_appears(make_client: Callable[..., TestClient], model_path: Path,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "secret" / "keys"
    client = make_client(wait_ready=False, model_uri=str(model_path), auth_mode="keys", auth_keys_file=str(path))
    wait_until(lambda: client.get("/ready").json()["error"]["code"] == "auth_not_ready", 30, "the reason")
    ready = client.get("/ready")
    assert ready.status_code == 503 and str(path) in ready.json()["error"]["message"]
    assert ready.headers["retry-after"] == "5"
    refused = client.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(ALICE))
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "auth_unavailable"
    assert client.get("/health").status_code == 200
    path.parent.mkdir()
    path.write_text(f"alice:{ALICE}\n")
    wait_until(lambda: client.get("/ready").status_code == 200, 30, "ready once the keys are there")
    assert client.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(ALICE)).status_code == 200


# ---------------------------------------------------------------------------------- rotation --


class SecretVolume:
    """A folder laid out like a mounted Kubernetes Secret: `keys` -> `..data/keys`, `..data` -> a timestamped
    folder; an update writes a new folder and swaps `..data` atomically (rename of a symlink)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.version = 0
        (root / "keys").symlink_to("..data/keys")

    @property
    def path(self) -> Path:
        return self.root / "keys"

    def write(self, text: str) -> None:
        self.version += 1
        folder = self.root / f"..2026_12_03_{self.version:04d}"
        folder.mkdir()
        (folder / "keys").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(folder.name)
        os.replace(link, self.root / "..data")


def _call(url: str, key: str, stop: threading.Event, outcomes: Counter[str]) -> None:
    with httpx.Client(base_url=url, timeout=10, headers=bearer(key)) as http:
        while not stop.is_set():
            try:
                outcomes[str(http.post("/predict", json=EXAMPLE_REQUEST).status_code)] += 1
            except httpx.HTTPError as exc:
                outcomes[type(exc).__name__] += 1


def _load(url: str, key: str, clients: int = 3) -> tuple[threading.Event, list[threading.Thread], Counter[str]]:
    stop, outcomes = threading.Event(), Counter[str]()
    threads = [threading.Thread(target=_call, args=(url, key, stop, outcomes)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return stop, threads, outcomes


def _stop(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for thread in threads:
        thread.join()


def test_keys_rotated_under_load_fail_no_valid_caller(start_api: Callable[..., ApiProcess], model_path: Path,
                                                      tmp_path: Path) -> None:
    old, new = "old-key-0123456789abcdef", "new-key-0123456789abcdef"
    secret = SecretVolume(tmp_path / "secret")
    secret.write(f"old:{old}\n")
    api = start_api(MODEL_URI=str(model_path), AUTH_MODE="keys", AUTH_KEYS_FILE=str(secret.path), LOG_FORMAT="json")
    api.wait_ready()
    old_stop, old_threads, old_outcomes = _load(api.url, old)
    try:
        wait_until(lambda: old_outcomes["200"] > 0, 20, "the old key's callers to be served")
        secret.write(f"old:{old}\nnew:{new}\n")  # step 1: both keys
        wait_until(lambda: api.http.post("/predict", json=EXAMPLE_REQUEST, headers=bearer(new)).status_code == 200,
                   20, "the new key to be accepted")
        new_stop, new_threads, new_outcomes = _load(api.url, new)
        try:
            wait_until(lambda: new_outcomes["200"] > 0, 20, "the new key's callers to be served")
            _stop(old_stop, old_threads)  # every caller has moved to the new key
            secret.write(f"new:{new}\n")  # step 2: the old key goes
            wait_until(lambda: api.http.post("/predict", json=EXAMPLE_REQUEST,
                                             headers=bearer(old)).status_code == 401, 20, "the old key refused")
            served = new_outcomes["200"]
            wait_until(lambda: new_outcomes["200"] > served, 20, "the new key's callers still served")
        finally:
            _stop(new_stop, new_threads)
    finally:
        _stop(old_stop, old_threads)
    assert set(old_outcomes) == {"200"} and set(new_outcomes) == {"200"}, (old_outcomes, new_outcomes)
    metrics = api.http.get("/metrics", headers=bearer(new)).text
    assert "retail_prediction_auth_keys 1.0" in metrics

    def callers() -> Counter[Any]:
        return Counter(r.get("caller") for r in api.log_records()
                       if r.get("logger") == "retail_prediction.access" and r.get("route") == "/predict")

    # every request of a valid key has its access line, naming the key (lines are written in batches)
    wait_until(lambda: callers()["new"] >= new_outcomes["200"], 5, "the new caller's access lines")
    assert callers()["old"] >= old_outcomes["200"]
    assert old not in api.log() and new not in api.log()
