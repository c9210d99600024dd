"""Shared pytest fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
# Data: weeks generated for the run, the real LGSR weeks when present, a trained model

REPO = Path(__file__).resolve().parents[1]
# The real dunnhumby weeks cannot be redistributed: tests marked `real_data` check them when they are here
# (LGSR_DATA, else ../shared/data/lgsr beside the repo) and are deselected otherwise. Every other test runs
# on weeks the synthetic generator writes for the session.
LGSR = Path(os.environ.get("LGSR_DATA") or REPO.parent / "shared" / "data" / "lgsr")
LGSR_VARIANTS = Path(os.environ.get("LGSR_VARIANTS") or LGSR.parent / "lgsr-variants")
HAVE_LGSR = (LGSR / "transactions_200607.csv.gz").is_file()
# A small but real training set: 10 weeks of the shared data (trains in seconds).
SMALL_WEEKS = [200607, 200609, 200610, 200611, 200612, 200613, 200614, 200615, 200616, 200617]
# The generated weeks: 14 consecutive shop weeks from 200607 (~8,000 lines, ~1,300 baskets each), made in
# about a second; the first 10 train `trained_model` (about 20 s), the rest are later weeks to score.
GENERATED = {"weeks": 14, "customers": 1500, "seed": 3, "start_week": 200607}
TRAIN_WEEK_COUNT = 10


@dataclass(frozen=True)
class Weeks:
    """A folder of weekly transaction files: the weeks a model trains on and later weeks to score."""

    folder: Path
    train: list[Path]
    later: list[Path]

    @property
    def train_weeks(self) -> list[int]:
        return [int(p.name[13:19]) for p in self.train]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_data: checks the real LGSR weeks; runs only when they are present")


def pytest_report_header(config: pytest.Config) -> str:
    if HAVE_LGSR:
        return f"real LGSR weeks: {LGSR} (tests marked real_data run too)"
    return (f"real LGSR weeks: not at {LGSR}; the tests marked real_data are deselected (set LGSR_DATA to run "
            "them); every other test runs on generated weeks")


_real_data_deselected: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAVE_LGSR:
        return
    kept = [item for item in items if item.get_closest_marker("real_data") is None]
    if len(kept) < len(items):
        dropped = [item for item in items if item not in kept]
        _real_data_deselected.extend(item.nodeid for item in dropped)
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _real_data_deselected:
        terminalreporter.write_line(
            f"{len(_real_data_deselected)} tests of the real LGSR weeks deselected: no data at {LGSR} (set "
            "LGSR_DATA to run them); every other test ran on generated weeks")


@pytest.fixture(scope="session")
def weeks(tmp_path_factory: pytest.TempPathFactory) -> Weeks:
    """The generated weeks (`retail-prediction generate` with GENERATED), made once per session."""
    from retail_prediction.data.synthetic import generate

    folder = tmp_path_factory.mktemp("generated-weeks")
    files = sorted(generate(folder, **GENERATED).files)
    files = [f for f in files if f.name.startswith("transactions_")]
    return Weeks(folder, files[:TRAIN_WEEK_COUNT], files[TRAIN_WEEK_COUNT:])


@pytest.fixture(scope="session")
def lgsr() -> Path:
    """The real LGSR folder, for tests marked real_data (deselected when it is absent)."""
    assert HAVE_LGSR, "a test using the real weeks must be marked real_data"
    return LGSR


@pytest.fixture(scope="session")
def real_weeks(lgsr: Path) -> Weeks:
    return Weeks(lgsr, [lgsr / f"transactions_{w}.csv.gz" for w in SMALL_WEEKS],
                 [lgsr / f"transactions_{w}.csv.gz" for w in (200720, 200721, 200752)])


def _train(weeks: Weeks, out: Path) -> Path:
    from retail_prediction.training.train import TrainConfig, train

    train(weeks.train, out, TrainConfig(validation_weeks=2))
    return out


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, weeks: Weeks) -> Path:
    """A model.tar.gz trained by the real pipeline on the 10 generated training weeks (validated on the
    last 2): what the API, browser and S3 tests serve."""
    return _train(weeks, tmp_path_factory.mktemp("model") / "model.tar.gz")


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory, real_weeks: Weeks) -> Path:
    """The same on 10 real weeks (tests marked real_data)."""
    return _train(real_weeks, tmp_path_factory.mktemp("real-model") / "model.tar.gz")


@pytest.fixture(scope="session", params=["generated", pytest.param("real", marks=pytest.mark.real_data)])
def model_and_week(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """A trained model and a later week to score with it: generated, and the real pair when present."""
    if request.param == "generated":
        return request.getfixturevalue("trained_model"), request.getfixturevalue("weeks").later[-1]
    return request.getfixturevalue("real_model"), request.getfixturevalue("real_weeks").later[-1]
