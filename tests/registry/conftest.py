"""Fixtures of the registry tests: versions of one trained model, a clearly worse model, and registry roots
on a local folder and on the session's SeaweedFS server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from archives import edit_json, replace_members
from retail_prediction.artifact.s3 import reset_s3_client
from retail_prediction.registry.root import LocalRoot, Root, S3Root
from s3server import MODELS_BUCKET, S3Server


def reversion(source: Path, dest: Path, version: str) -> Path:
    """The same model under another version: a different, valid archive (new SHA-256), equal figures."""
    return replace_members(source, dest, version, metadata_json=edit_json(source, "metadata.json",
                                                                          model_version=version))


@dataclass(frozen=True)
class Models:
    """Archives to push: v1 and v2 are the same model under two versions (equal on any gate)."""

    v1: Path
    v2: Path


@pytest.fixture(scope="session")
def worse_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model trained on 5 weeks of a differently seeded, smaller generated world (its products,
    customers and price levels are not the gate weeks'): clearly worse on the `weeks` fixture's later weeks.
    Its weeks (200607-200611) do not overlap those later weeks."""
    from retail_prediction.data.synthetic import generate
    from retail_prediction.training.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("other-world")
    files = [f for f in generate(folder, weeks=5, customers=400, seed=11, start_week=200607).files
             if f.name.startswith("transactions_")]
    out = tmp_path_factory.mktemp("worse") / "trained.tar.gz"
    train(files, out, TrainConfig(validation_weeks=1, threads=1))  # one thread: no OpenMP contention
    return reversion(out, out.with_name("model.tar.gz"), "worse")


@pytest.fixture(scope="session")
def models(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("registry-models")
    return Models(reversion(trained_model, folder / "v1.tar.gz", "v1"),
                  reversion(trained_model, folder / "v2.tar.gz", "v2"))


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Root]:
    """An empty registry root: a local folder, or a fresh prefix of the SeaweedFS bucket (admin identity)."""
    if request.param == "local":
        yield LocalRoot(tmp_path / "registry")
        return
    server: S3Server = request.getfixturevalue("s3_running")
    yield S3Root(MODELS_BUCKET, f"registry-{uuid.uuid4().hex[:8]}", client=server.client())
    reset_s3_client()


@pytest.fixture
def make_s3_root(s3_server: S3Server) -> Callable[..., S3Root]:
    """Factory: an S3 root on a fresh prefix, as the identity whose client is passed (admin default)."""

    def make(prefix: str | None = None, client: object = None) -> S3Root:
        return S3Root(MODELS_BUCKET, prefix or f"registry-{uuid.uuid4().hex[:8]}",
                      client=client or s3_server.client())

    return make
