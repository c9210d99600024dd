"""AUTH_MODE=jwt against the test suite's own OIDC issuer (tests/s3server.py: discovery and JWKS on
127.0.0.1, RS256 tokens): valid, expired, wrong audience, wrong issuer, `alg: none`, HMAC with the public key,
a forged signature, an unknown kid (one refresh, then no more), the issuer down (503, never open), and a
real server process naming the token's subject in its access line."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from pydantic import ValidationError

from retail_prediction.api import Settings, auth_jwt
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from s3server import OidcIssuer, new_signing_key

from .conftest import ApiProcess, wait_until

INVALID = 'Bearer realm="retail-prediction", error="invalid_token"'


@pytest.fixture
def oidc() -> Iterator[OidcIssuer]:
    issuer = OidcIssuer(audience="retail-api")
    issuer.start()
    yield issuer
    issuer.stop()


@pytest.fixture
def jwt_client(make_client: Callable[..., TestClient], model_path: Path,
               oidc: OidcIssuer) -> Callable[..., TestClient]:
    def make(**overrides: object) -> TestClient:
        settings = {"model_uri": str(model_path), "auth_mode": "jwt", "auth_jwt_issuer": oidc.url,
                    "auth_jwt_audience": "retail-api", "auth_jwks_min_refresh_seconds": 60, **overrides}
        return make_client(**settings)

    return make


def predict(client: TestClient, token: str) -> httpx.Response:
    return client.post("/predict", json=EXAMPLE_REQUEST, headers={"Authorization": f"Bearer {token}"})


def assert_refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == INVALID
    assert response.json()["error"] == {"code": "unauthorized", "message": response.json()["error"]["message"],
                                        "details": {"reason": reason}}


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_valid_token_passes_and_is_verified_once(jwt_client: Callable[..., TestClient], oidc: OidcIssuer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client = jwt_client()
    decoded: list[str] = []
    real = auth_jwt.jwt.decode
    monkeypatch.setattr(auth_jwt.jwt, "decode", lambda token, *a, **k: decoded.append(token) or real(token, *a, **k))
    token = oidc.token("system:serviceaccount:checkout:web")
    for _ in range(3):
        response = predict(client, token)
        assert response.status_code == 200, response.text
    assert len(decoded) == 1, "a repeated token is not verified again"
    assert oidc.requests["/.well-known/openid-configuration"] == 1 and oidc.requests["/keys"] == 1
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    assert 'retail_prediction_caller_requests_total{caller="system:serviceaccount:checkout:web"} 4.0' in metrics
    assert 'retail_prediction_auth_jwks_fetches_total{result="success"} 1.0' in metrics


def test_claims_that_do_not_hold_are_refused(jwt_client: Callable[..., TestClient], oidc: OidcIssuer) -> None:
    client = jwt_client()
    assert predict(client, oidc.token("ok")).status_code == 200
    assert_refused(predict(client, oidc.token("late", ttl=-120)), "expired")  # past the 30 s leeway
    assert_refused(predict(client, oidc.token("other", audience="another-api")), "wrong_audience")
    assert_refused(predict(client, oidc.token("other", issuer="https://evil.example.com")), "wrong_issuer")
    assert_refused(predict(client, oidc.token("forged", key=new_signing_key())), "bad_signature")
    assert_refused(predict(client, "not.a.jwt"), "malformed_token")
    claims = {"iss": oidc.url, "sub": "none", "aud": "retail-api", "exp": 2_000_000_000}
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': oidc.KID})}.{_b64(claims)}."
    assert_refused(predict(client, unsigned), "bad_algorithm")
    # the public key used as an HMAC secret (algorithm confusion)
    public = oidc.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': oidc.KID})}.{_b64(claims)}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    hmac_token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert_refused(predict(client, hmac_token), "bad_algorithm")
    no_subject = pyjwt.encode({k: v for k, v in claims.items() if k != "sub"}, oidc.key, algorithm="RS256",
                              headers={"kid": oidc.KID})
    assert_refused(predict(client, no_subject), "missing_claim")


def test_an_unknown_kid_refreshes_the_keys_once(jwt_client: Callable[..., TestClient], oidc: OidcIssuer) -> None:
    client = jwt_client()
    assert predict(client, oidc.token("before")).status_code == 200
    assert oidc.requests["/keys"] == 1
    rotated = oidc.add_key("rotated")  # the issuer publishes a new key after the app fetched its keys
    assert predict(client, oidc.token("after", key=rotated, kid="rotated")).status_code == 200
    assert oidc.requests["/keys"] == 2
    for n in range(20):  # made-up kids: refused, and no more fetches within AUTH_JWKS_MIN_REFRESH_SECONDS
        assert_refused(predict(client, oidc.token("flood", key=rotated, kid=f"made-up-{n}")), "unknown_key")
    assert oidc.requests["/keys"] == 2


def test_the_issuer_down_fails_closed(jwt_client: Callable[..., TestClient], oidc: OidcIssuer) -> None:
    oidc.stop()
    client = jwt_client(auth_jwks_timeout_seconds=1)
    token = oidc.token("svc")
    refused = predict(client, token)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert refused.json()["error"]["code"] == "auth_unavailable"
    assert client.get("/ready").status_code == 200 and client.get("/health").status_code == 200
    oidc.start()  # back: within a couple of seconds the keys are fetched and the token passes
    wait_until(lambda: predict(client, token).status_code == 200, 20, "the token to pass once the issuer is back")


def test_keys_in_hand_outlive_an_issuer_outage(jwt_client: Callable[..., TestClient], oidc: OidcIssuer) -> None:
    client = jwt_client(auth_jwks_refresh_seconds=0.001, auth_jwks_min_refresh_seconds=0,
                        auth_jwks_timeout_seconds=1, auth_token_cache_size=0)
    assert predict(client, oidc.token("a")).status_code == 200
    oidc.stop()
    assert predict(client, oidc.token("b")).status_code == 200  # the refresh fails, the keys stay
    text = client.get("/metrics", headers={"Authorization": f"Bearer {oidc.token('c')}"}).text
    assert 'retail_prediction_auth_jwks_fetches_total{result="failure"}' in text


@pytest.mark.parametrize("algorithms", ["none", "HS256", "RS256,HS512", ""])
def test_unsafe_algorithms_cannot_be_configured(algorithms: str) -> None:
    with pytest.raises(ValidationError, match="AUTH_JWT_ALGORITHMS"):
        Settings(auth_jwt_algorithms=algorithms)


def test_plain_http_issuer_only_on_loopback(jwt_client: Callable[..., TestClient]) -> None:
    with pytest.raises(ValueError, match="https"):
        jwt_client(auth_jwt_issuer="http://issuer.example.com")


def test_a_server_process_names_the_subject(start_api: Callable[..., ApiProcess], model_path: Path,
                                            oidc: OidcIssuer) -> None:
    api = start_api(MODEL_URI=str(model_path), AUTH_MODE="jwt", AUTH_JWT_ISSUER=oidc.url,
                    AUTH_JWT_AUDIENCE="retail-api", LOG_FORMAT="json")
    api.wait_ready()
    token = oidc.token("system:serviceaccount:pricing:batch")
    answer = api.http.post("/predict", json=EXAMPLE_REQUEST, headers={"Authorization": f"Bearer {token}",
                                                                      "X-Request-ID": "jwt-1"})
    assert answer.status_code == 200
    assert api.http.post("/predict", json=EXAMPLE_REQUEST).status_code == 401

    def line() -> dict[str, object] | None:
        return next((r for r in api.log_records() if r.get("request_id") == "jwt-1"), None)

    wait_until(lambda: line() is not None, 5, "the access line")
    assert line()["caller"] == "system:serviceaccount:pricing:batch"  # type: ignore[index]
    assert token not in api.log()


def test_a_slow_issuer_holds_only_the_requests_that_need_it(start_api: Callable[..., ApiProcess],
                                                          model_path: Path, oidc: OidcIssuer) -> None:
    """The JWKS is fetched in a worker thread: while the issuer has not answered, probes and requests with
    nothing to verify are answered (a real server process; the issuer is held, not timed)."""
    api = start_api(MODEL_URI=str(model_path), AUTH_MODE="jwt", AUTH_JWT_ISSUER=oidc.url,
                    AUTH_JWT_AUDIENCE="retail-api", AUTH_JWKS_TIMEOUT_SECONDS="30")
    api.wait_ready()
    oidc.gate.clear()
    token = oidc.token("patient")
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(api.http.post(
        "/predict", json=EXAMPLE_REQUEST, headers={"Authorization": f"Bearer {token}"}).status_code))
    waiting.start()
    try:
        wait_until(lambda: oidc.requests["/.well-known/openid-configuration"] == 1, 10, "the discovery request")
        assert api.http.get("/health").status_code == 200
        assert api.http.get("/ready").status_code == 200
        assert api.http.post("/predict", json=EXAMPLE_REQUEST).status_code == 401  # no token: nothing to fetch
        assert answers == [], "the token's request waits for the issuer"
    finally:
        oidc.gate.set()
        waiting.join()
    assert answers == [200]
