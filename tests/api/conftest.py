"""Fixtures of the API tests: model archives (real, re-versioned, tampered), in-process apps, and the
API as a real uvicorn subprocess on a free port."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from retail_prediction.api import Settings, create_app
from retail_prediction.artifact.archive import pack_artifact, read_artifact

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# Model archives


@pytest.fixture(scope="session")
def model_path(request: pytest.FixtureRequest) -> Path:
    """The small model trained on generated weeks by the session fixture of tests/conftest.py (`trained_model`).

    API_TEST_MODEL=path reuses an existing archive instead (quick local iterations).
    """
    given = os.environ.get("API_TEST_MODEL")
    return Path(given) if given else Path(request.getfixturevalue("trained_model"))


def repack(source: Path, dest: Path, version: str) -> Path:
    """The same model under another version: a genuinely different, valid archive (new SHA-256)."""
    artifact = read_artifact(source)
    files = dict(artifact.files)
    metadata = json.loads(files["metadata.json"])
    metadata["model_version"] = version
    files["metadata.json"] = json.dumps(metadata, indent=2).encode()
    pack_artifact(dest, files, metadata={"model_version": version})
    return dest


def tamper(source: Path, dest: Path) -> Path:
    """A copy whose metadata.json was edited after packing: the manifest's hash no longer matches."""
    out = io.BytesIO()
    with tarfile.open(source, "r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name == "metadata.json":
                data = data.replace(b'"model_version": "', b'"model_version": "evil-', 1)
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    dest.write_bytes(out.getvalue())
    return dest


@pytest.fixture(scope="session")
def model_v2(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return repack(model_path, tmp_path_factory.mktemp("v2") / "model.tar.gz", "test-v2")


@pytest.fixture(scope="session")
def tampered_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tamper(model_path, tmp_path_factory.mktemp("tampered") / "model.tar.gz")


# --------------------------------------------------------------------------------------------------
# In-process apps (real app object, real ASGI, no sockets): validation, errors, metrics


def metric_samples(client: Any, contains: str) -> dict[str, float]:
    """The /metrics samples whose name contains `contains`, as name[label value]... -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if contains in sample.name:
                out[sample.name + "".join(f"[{v}]" for v in sample.labels.values())] = sample.value
    return out


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Factory: a started TestClient for an app built from Settings(**overrides); ready when a model is."""
    clients: list[TestClient] = []

    def make(wait_ready: bool = True, **overrides: Any) -> TestClient:
        overrides.setdefault("model_poll_seconds", 0)
        overrides.setdefault("model_dir", tmp_path / "models")
        app: FastAPI = create_app(Settings(**overrides))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if wait_ready:
            wait_until(lambda: client.get("/ready").status_code == 200, 30, "the model to load")
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient], model_path: Path) -> TestClient:
    return make_client(model_uri=str(model_path))


# --------------------------------------------------------------------------------------------------
# The API as a real server process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiProcess:
    """`python -m retail_prediction.serve` on 127.0.0.1:<free port>, stdout+stderr to a log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "retail_prediction.serve"], env=full_env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=env.get("_CWD", str(REPO)))  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._healthy, 30, f"{self.url}/health")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(lambda: self.http.get("/ready").status_code == 200, timeout, f"{self.url}/ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.http.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.http.close()


@pytest.fixture
def start_api(tmp_path: Path) -> Iterator[Callable[..., ApiProcess]]:
    """Factory: start_api(env_overrides) -> a running ApiProcess (killed after the test)."""
    procs: list[ApiProcess] = []

    def start(env: dict[str, str] | None = None, **settings: str) -> ApiProcess:
        """`env`: extra variables (e.g. an S3 identity); `settings`: MODEL_URI=... style overrides."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AWS_"))}
        base.update({k: v for k, v in (env or {}).items() if not k.startswith("MODEL_")})
        base.update({"MODEL_DIR": str(tmp_path / f"models-{len(procs)}"), "MODEL_POLL_SECONDS": "0"})
        base.update({k.upper(): v for k, v in settings.items()})
        proc = ApiProcess(base, tmp_path / f"api-{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
