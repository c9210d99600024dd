"""A real API process following a registry's ``current/`` under load: promote v2, then roll back to v1, while
clients keep posting /predict. No request fails, and every client sees v1 -> v2 -> v1."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from archives import edit_json, replace_members
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.registry import operations as ops
from retail_prediction.registry.root import LocalRoot, Root, S3Root
from s3server import MODELS_BUCKET, S3Server, subprocess_env

from .conftest import ApiProcess, wait_until

CLIENTS = 3


class Client(threading.Thread):
    """Posts /predict in a loop on its own connection; keeps the versions it was answered by, in order."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, stop
        self.versions: list[str] = []  # consecutive duplicates folded
        self.answers = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set():
                try:
                    response = http.post("/predict", json=EXAMPLE_REQUEST)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                    continue
                self.answers += 1
                version = response.json()["model_version"]
                if not self.versions or self.versions[-1] != version:
                    self.versions.append(version)


def _served(api: ApiProcess) -> str:
    return str(api.http.get("/model/info").json()["model_version"])


@pytest.mark.parametrize("where", ["local", "s3"])
def test_server_follows_current_across_promote_and_rollback_under_load(
        where: str, start_api: Callable[..., ApiProcess], model_path: Path, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:  # fmt: skip
    archives = {v: replace_members(model_path, tmp_path / f"{v}.tar.gz", v,
                                   metadata_json=edit_json(model_path, "metadata.json", model_version=v))
                for v in ("v1", "v2")}
    root: Root
    if where == "local":
        root = LocalRoot(tmp_path / "registry")
        env, settings = None, {"model_uri": f"file://{root.folder}/current/model.tar.gz"}
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        prefix = f"rollout-{uuid.uuid4().hex[:8]}"
        root = S3Root(MODELS_BUCKET, prefix, client=server.client())
        env = subprocess_env(server, server.reader)  # the API reads only; the test promotes as admin
        settings = {"model_bucket": MODELS_BUCKET, "model_key": f"{prefix}/current/model.tar.gz"}
    work = tmp_path / "work"
    for archive in archives.values():
        ops.push(root, archive)
    ops.promote(root, "v1", work)

    api = start_api(env, model_poll_seconds="0.5", **settings)
    api.wait_ready()
    assert _served(api) == "v1"
    stop = threading.Event()
    clients = [Client(api.url, stop) for _ in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: all(c.answers > 0 for c in clients), 30, "every client answered by v1")
        ops.promote(root, "v2", work)
        wait_until(lambda: _served(api) == "v2", 30, "/model/info to show v2")
        wait_until(lambda: all(c.versions[-1] == "v2" for c in clients), 30, "every client answered by v2")
        ops.rollback(root, work)
        wait_until(lambda: _served(api) == "v1", 30, "/model/info to show v1 again")
        wait_until(lambda: all(c.versions[-1] == "v1" for c in clients), 30, "every client answered by v1 again")
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)
    print(f"{where}: answers per client {[c.answers for c in clients]}")  # shown with -rP
    assert [f for c in clients for f in c.failures] == []
    assert [c.versions for c in clients] == [["v1", "v2", "v1"]] * CLIENTS
    metrics = api.http.get("/metrics").text
    assert 'retail_prediction_model_loads_total{kind="reload",result="success"} 2.0' in metrics
    served = re.findall(r'^retail_prediction_model_info\{[^}]*version="([^"]+)"[^}]*\} 1\.0$', metrics, re.MULTILINE)
    assert served == ["v1"]
