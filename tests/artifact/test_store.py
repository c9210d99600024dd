"""store.py and s3.py against a real S3 server (SeaweedFS) with enforced credentials, and local files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from retail_prediction.artifact import s3
from retail_prediction.artifact.archive import pack_artifact, read_artifact, sha256_file
from retail_prediction.artifact.s3 import StoreError
from retail_prediction.artifact.store import FetchedArtifact, ModelSource, fetch, probe_version, publish
from s3server import MODELS_BUCKET, S3Server, free_ports, new_signing_key

UseIdentity = Callable[..., None]


@pytest.fixture(autouse=True)
def fresh_client() -> Iterator[None]:
    """Each test builds its client from the environment it set up (s3 caches one per process)."""
    s3.reset_s3_client()
    yield
    s3.reset_s3_client()


@pytest.fixture
def as_admin(s3_use_identity: UseIdentity) -> None:
    s3_use_identity()


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "model.tar.gz"
    pack_artifact(path, {"model.onnx": os.urandom(2048), "feature_spec.json": b"{}"},
                  metadata={"model_version": "v1"})  # fmt: skip
    return path


def new_key() -> str:
    return f"test/{uuid.uuid4().hex}/model.tar.gz"


def fails(reason: str, call: Callable[[], object], *fragments: str) -> StoreError:
    with pytest.raises(StoreError) as info:
        call()
    assert info.value.reason == reason, str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return info.value


# --------------------------------------------------------------------------------------------------
# Sources


@pytest.mark.parametrize(
    ("text", "uri", "is_s3"),
    [
        ("s3://models/prod/model.tar.gz", "s3://models/prod/model.tar.gz", True),
        ("  s3://models/m.tar.gz ", "s3://models/m.tar.gz", True),
        ("/srv/models/model.tar.gz", "/srv/models/model.tar.gz", False),
        ("file:///srv/models/model%20a.tar.gz", "/srv/models/model a.tar.gz", False),
        ("file://localhost/srv/m.tar.gz", "/srv/m.tar.gz", False),
        ("models/model.tar.gz", "models/model.tar.gz", False),
    ],
)
def test_parse(text: str, uri: str, is_s3: bool) -> None:
    source = ModelSource.parse(text)
    assert (source.uri, source.is_s3) == (uri, is_s3)


def test_source_parts() -> None:
    source = ModelSource.parse("s3://models/prod/v1/model.tar.gz")
    assert (source.bucket, source.key) == ("models", "prod/v1/model.tar.gz")
    assert source == ModelSource.from_bucket_key("models", "prod/v1/model.tar.gz")
    assert str(source) == source.uri
    with pytest.raises(ValueError, match="S3 source"):
        _ = source.path
    assert ModelSource.parse("/a/b.tar.gz").path == Path("/a/b.tar.gz")
    with pytest.raises(ValueError, match="local path"):
        _ = ModelSource.parse("/a/b.tar.gz").bucket


@pytest.mark.parametrize("text", ["", "s3://", "s3://bucket", "s3://bucket/", "s3://b/dir/", "https://x/y",
                                  "file://otherhost/x"])  # fmt: skip
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        ModelSource.parse(text)


# --------------------------------------------------------------------------------------------------
# Local files


def test_local_fetch_is_in_place(archive: Path, tmp_path: Path) -> None:
    source = ModelSource.parse(f"file://{archive}")
    got = fetch(source, tmp_path / "unused")
    st = archive.stat()
    assert got == FetchedArtifact(path=archive, version=f"{st.st_mtime_ns}-{st.st_size}", uri=str(archive))
    assert not (tmp_path / "unused").exists()
    assert probe_version(source) == got.version


def test_local_version_changes_on_rewrite(archive: Path) -> None:
    source = ModelSource.parse(str(archive))
    before = probe_version(source)
    time.sleep(0.01)
    pack_artifact(archive, {"model.onnx": b"new"}, metadata={"model_version": "v2"})
    assert probe_version(source) != before


def test_local_missing(tmp_path: Path) -> None:
    source = ModelSource.parse(str(tmp_path / "nope.tar.gz"))
    fails("not_found", lambda: fetch(source, tmp_path), "nope.tar.gz")
    fails("not_found", lambda: probe_version(source), "nope.tar.gz")
    fails("io", lambda: fetch(ModelSource.parse(str(tmp_path)), tmp_path), "directory")


# --------------------------------------------------------------------------------------------------
# S3: the happy path


@pytest.mark.usefixtures("as_admin")
def test_publish_then_fetch(s3_server: S3Server, archive: Path, tmp_path: Path) -> None:
    key = new_key()
    result = publish(archive, MODELS_BUCKET, key)
    digest = sha256_file(archive)
    assert result["uri"] == f"s3://{MODELS_BUCKET}/{key}"
    assert (result["sha256"], result["bytes"]) == (digest, archive.stat().st_size)
    head = s3_server.client().head_object(Bucket=MODELS_BUCKET, Key=key)
    assert head["Metadata"]["sha256"] == digest and head["ETag"].strip('"') == result["etag"]

    source = ModelSource.parse(result["uri"])
    dest = tmp_path / "cache" / "nested"  # created on demand
    got = fetch(source, dest)
    assert got.uri == source.uri and got.path.parent == dest
    assert got.path.read_bytes() == archive.read_bytes()
    assert got.version == probe_version(source)
    assert got.version.startswith(result["etag"])
    assert read_artifact(got.path).sha256 == digest
    assert [p.name for p in dest.iterdir()] == [got.path.name]  # no temp file left behind


@pytest.mark.usefixtures("as_admin")
def test_version_changes_after_reupload(archive: Path, tmp_path: Path) -> None:
    key = new_key()
    publish(archive, MODELS_BUCKET, key)
    source = ModelSource.from_bucket_key(MODELS_BUCKET, key)
    first = probe_version(source)
    assert probe_version(source) == first  # stable while unchanged
    pack_artifact(archive, {"model.onnx": b"retrained"}, metadata={"model_version": "v2"})
    publish(archive, MODELS_BUCKET, key)
    second = probe_version(source)
    assert second != first
    got = fetch(source, tmp_path)
    assert got.version == second
    assert read_artifact(got.path).model_version == "v2"


def test_reader_can_fetch_but_not_publish(
    s3_server: S3Server, s3_use_identity: UseIdentity, archive: Path, tmp_path: Path
) -> None:
    key = new_key()
    s3_server.client().upload_file(str(archive), MODELS_BUCKET, key)
    s3_use_identity(s3_server.reader)
    source = ModelSource.from_bucket_key(MODELS_BUCKET, key)
    assert fetch(source, tmp_path).path.read_bytes() == archive.read_bytes()
    assert probe_version(source)
    fails("access_denied", lambda: publish(archive, MODELS_BUCKET, new_key()), "s3://models/")


def test_publish_refuses_an_invalid_archive(s3_server: S3Server, as_admin: None, tmp_path: Path) -> None:
    bogus = tmp_path / "model.tar.gz"
    bogus.write_bytes(b"not an archive")
    key = new_key()
    fails("invalid", lambda: publish(bogus, MODELS_BUCKET, key), "not a model archive")
    with pytest.raises(s3_server.client().exceptions.ClientError):
        s3_server.client().head_object(Bucket=MODELS_BUCKET, Key=key)


def test_unwritable_download_dir(as_admin: None, archive: Path, tmp_path: Path) -> None:
    key = new_key()
    publish(archive, MODELS_BUCKET, key)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the download directory should be")
    source = ModelSource.from_bucket_key(MODELS_BUCKET, key)
    fails("io", lambda: fetch(source, blocker / "cache"), "download directory")


def test_download_size_limit(as_admin: None, archive: Path, tmp_path: Path) -> None:
    key = new_key()
    publish(archive, MODELS_BUCKET, key)
    source = ModelSource.from_bucket_key(MODELS_BUCKET, key)
    fails("too_large", lambda: fetch(source, tmp_path / "d", max_bytes=100), "100-byte limit")
    assert not any((tmp_path / "d").glob("*"))


# --------------------------------------------------------------------------------------------------
# S3: failures, each with its reason


def test_missing_key(as_admin: None, tmp_path: Path) -> None:
    source = ModelSource.from_bucket_key(MODELS_BUCKET, "no/such/model.tar.gz")
    fails("not_found", lambda: fetch(source, tmp_path), source.uri)
    fails("not_found", lambda: probe_version(source), source.uri)
    assert list(tmp_path.iterdir()) == []


def test_missing_bucket(as_admin: None, archive: Path, tmp_path: Path) -> None:
    source = ModelSource.from_bucket_key("no-such-bucket", "model.tar.gz")
    fails("no_such_bucket", lambda: fetch(source, tmp_path), source.uri)
    fails("no_such_bucket", lambda: probe_version(source), source.uri)
    fails("no_such_bucket", lambda: publish(archive, "no-such-bucket", "model.tar.gz"))


@pytest.mark.parametrize("which", ["wrong_secret", "unknown_key"])
def test_bad_credentials(
    s3_server: S3Server, s3_use_identity: UseIdentity, archive: Path, tmp_path: Path, which: str
) -> None:
    key = new_key()
    s3_server.client().upload_file(str(archive), MODELS_BUCKET, key)
    access, secret = s3_server.admin
    s3_use_identity((access, "wrong-secret") if which == "wrong_secret" else ("AKNOBODY", secret))
    source = ModelSource.from_bucket_key(MODELS_BUCKET, key)
    fails("bad_credentials", lambda: fetch(source, tmp_path), source.uri)
    fails("bad_credentials", lambda: probe_version(source), source.uri)
    fails("bad_credentials", lambda: publish(archive, MODELS_BUCKET, key))


def test_no_credentials(s3_use_identity: UseIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_use_identity()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    source = ModelSource.from_bucket_key(MODELS_BUCKET, "model.tar.gz")
    fails("bad_credentials", lambda: probe_version(source), "no usable AWS credentials")


@pytest.mark.usefixtures("as_admin")
def test_unreachable_when_stopped(s3_running: S3Server, archive: Path, tmp_path: Path) -> None:
    key = new_key()
    publish(archive, MODELS_BUCKET, key)
    source = ModelSource.from_bucket_key(MODELS_BUCKET, key)
    quick = s3.make_s3_client(connect_timeout=0.5, read_timeout=1, max_attempts=1)
    s3_running.stop()
    started = time.monotonic()
    fails("unreachable", lambda: probe_version(source, client=quick), source.uri)
    fails("unreachable", lambda: fetch(source, tmp_path, client=quick), source.uri)
    assert time.monotonic() - started < 5
    s3_running.start()  # "S3 down, then up": same endpoint, data kept
    assert fetch(source, tmp_path).path.read_bytes() == archive.read_bytes()


def test_unreachable_with_default_retries(
    s3_use_identity: UseIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_use_identity()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_ports(1)[0]}")
    fails("unreachable", lambda: probe_version(ModelSource.parse("s3://models/m.tar.gz")), "unreachable")


# --------------------------------------------------------------------------------------------------
# IRSA-like: web-identity token exchanged by boto3's default chain at the server's STS


def test_web_identity_can_fetch_but_not_publish(
    s3_server: S3Server, s3_use_web_identity: Callable[[str], Path], archive: Path, tmp_path: Path
) -> None:
    assert s3_server.oidc is not None
    key = new_key()
    s3_server.client().upload_file(str(archive), MODELS_BUCKET, key)
    s3_use_web_identity(s3_server.oidc.token("system:serviceaccount:retail:api"))
    source = ModelSource.from_bucket_key(MODELS_BUCKET, key)
    assert fetch(source, tmp_path).path.read_bytes() == archive.read_bytes()
    fails("access_denied", lambda: publish(archive, MODELS_BUCKET, new_key()))


def test_web_identity_refused_tokens(s3_server: S3Server, s3_use_web_identity: Callable[[str], Path]) -> None:
    oidc = s3_server.oidc
    assert oidc is not None
    source = ModelSource.from_bucket_key(MODELS_BUCKET, "model.tar.gz")
    refused = {
        "signature": oidc.token("system:serviceaccount:retail:api", key=new_signing_key()),
        "audience": oidc.token("system:serviceaccount:retail:api", audience="someone-else"),
        "expired": oidc.token("system:serviceaccount:retail:api", ttl=-60),
    }
    for why, token in refused.items():
        s3_use_web_identity(token)
        s3.reset_s3_client()
        fails("bad_credentials", lambda: probe_version(source), "AssumeRoleWithWebIdentity", why)


# --------------------------------------------------------------------------------------------------
# Client configuration


def test_addressing_style(monkeypatch: pytest.MonkeyPatch, s3_use_identity: UseIdentity) -> None:
    s3_use_identity()
    assert s3.make_s3_client().meta.config.s3 == {"addressing_style": "path"}
    monkeypatch.setenv("AWS_S3_ADDRESSING_STYLE", "virtual")
    assert s3.make_s3_client().meta.config.s3 == {"addressing_style": "virtual"}
    monkeypatch.delenv("AWS_S3_ADDRESSING_STYLE")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert not (s3.make_s3_client().meta.config.s3 or {}).get("addressing_style")
    monkeypatch.setenv("AWS_S3_ADDRESSING_STYLE", "sideways")
    fails("invalid", s3.make_s3_client, "AWS_S3_ADDRESSING_STYLE")


@pytest.mark.usefixtures("as_admin")
def test_client_is_created_once_across_threads() -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(lambda _: s3.s3_client(), range(16)))
    assert all(client is clients[0] for client in clients)
    s3.reset_s3_client()
    assert s3.s3_client() is not clients[0]


def test_subprocess_env_reaches_the_server(
    s3_server: S3Server, s3_env: Callable[..., dict[str, str]], archive: Path, tmp_path: Path
) -> None:
    """A child process configured only by environment variables (as in the container) can fetch."""
    key = new_key()
    s3_server.client().upload_file(str(archive), MODELS_BUCKET, key)
    code = (
        "import json, sys; from pathlib import Path; from retail_prediction.artifact.store import *; "
        "got = fetch(ModelSource.parse(sys.argv[1]), Path(sys.argv[2])); "
        "print(json.dumps({'path': str(got.path), 'version': got.version}))"
    )
    uri = f"s3://{MODELS_BUCKET}/{key}"
    assert s3_server.oidc is not None
    envs = {"reader": s3_env(s3_server.reader), "irsa": s3_env(token=s3_server.oidc.token("sa:api"))}
    assert "AWS_ACCESS_KEY_ID" not in envs["irsa"] and envs["irsa"]["AWS_ROLE_ARN"]
    for name, env in envs.items():
        dest = tmp_path / name
        out = subprocess.run([sys.executable, "-c", code, uri, str(dest)], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, f"{name}: {out.stderr}"
        assert Path(json.loads(out.stdout)["path"]).read_bytes() == archive.read_bytes()
