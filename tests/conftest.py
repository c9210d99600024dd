"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from s3server import Credentials, S3Server, running_server, subprocess_env

# --------------------------------------------------------------------------------------------------
# S3 (a real SeaweedFS server; see tests/s3server.py)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS server for the whole session, bucket ``models`` created, credentials enforced,
    STS enabled with a local OIDC issuer (``s3_server.oidc``) for web-identity (IRSA-like) tests.

    Tests that stop or restart it should request `s3_running`, which restarts it afterwards.
    """
    yield from running_server(tmp_path_factory.mktemp("s3"))


@pytest.fixture
def s3_env(s3_server: S3Server, tmp_path: Path) -> Callable[..., dict[str, str]]:
    """Factory for a subprocess's full environment (os.environ minus AWS_*, plus the server's):
    ``s3_env()`` as admin, ``s3_env(s3_server.reader)``, or IRSA-style
    ``s3_env(token=s3_server.oidc.token("system:serviceaccount:ns:sa"))`` (no static keys)."""

    def make(creds: Credentials | None = None, *, token: str | None = None) -> dict[str, str]:
        if token is None:
            return subprocess_env(s3_server, creds)
        path = tmp_path / "subprocess-web-identity-token"
        path.write_text(token)
        return subprocess_env(s3_server, overrides=s3_server.web_identity_env(path))

    return make


@pytest.fixture
def s3_running(s3_server: S3Server) -> Iterator[S3Server]:
    """The session server, guaranteed up before and after the test (for tests that stop it)."""
    s3_server.start()
    try:
        yield s3_server
    finally:
        s3_server.start()


def _replace_aws_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_use_identity(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> Callable[..., None]:
    """Factory: point this process's AWS_* environment at the server as an identity (admin default).

    Any AWS_* already set (profiles, tokens, web identity) is removed first; monkeypatch restores
    everything after the test. Code that caches a client must drop it after calling this.
    """

    def use(creds: Credentials | None = None) -> None:
        _replace_aws_env(monkeypatch, s3_server.env(creds))

    return use


@pytest.fixture
def s3_use_web_identity(
    monkeypatch: pytest.MonkeyPatch, s3_server: S3Server, tmp_path: Path
) -> Callable[[str], Path]:
    """Factory: like `s3_use_identity`, but IRSA-style: ``use(token)`` writes the web-identity token
    to a file and sets AWS_ROLE_ARN / AWS_WEB_IDENTITY_TOKEN_FILE / AWS_ENDPOINT_URL_STS, no keys.
    Mint tokens with ``s3_server.oidc.token(subject)``; the role may read and list ``models``."""

    def use(token: str) -> Path:
        path = tmp_path / "web-identity-token"
        path.write_text(token)
        _replace_aws_env(monkeypatch, s3_server.web_identity_env(path))
        return path

    return use


# --------------------------------------------------------------------------------------------------
# Real data and a trained model

REPO = Path(__file__).resolve().parents[1]
LGSR = REPO.parent / "shared" / "data" / "lgsr"
LGSR_VARIANTS = REPO.parent / "shared" / "data" / "lgsr-variants"
# A small but real training set: 10 weeks of the shared data (trains in seconds).
SMALL_WEEKS = [200607, 200609, 200610, 200611, 200612, 200613, 200614, 200615, 200616, 200617]


@pytest.fixture(scope="session")
def lgsr() -> Path:
    if not LGSR.is_dir():
        pytest.skip(f"the shared LGSR data is not at {LGSR}")
    return LGSR


@pytest.fixture(scope="session")
def small_weeks(lgsr: Path) -> list[Path]:
    return [lgsr / f"transactions_{w}.csv.gz" for w in SMALL_WEEKS]


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, small_weeks: list[Path]) -> Path:
    """A model.tar.gz trained by the real pipeline on 10 real weeks (validated on the last 2)."""
    from retail_prediction.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model") / "model.tar.gz"
    train(small_weeks, out, TrainConfig(validation_weeks=2))
    return out
