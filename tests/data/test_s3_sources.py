"""Transaction files read straight from S3 (a real SeaweedFS server): `s3://bucket/prefix/`, globs and single
objects, CSV.gz and Parquet, the same tables and the same model as from the local copy; `train --out s3://` and
`--registry`; and refusals (no bucket, nothing there, access denied, a bad line) as one clear line naming the
object, exit code 2, no traceback."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import Weeks
from retail_prediction.artifact.archive import read_artifact
from retail_prediction.data import sources
from retail_prediction.data.errors import DataError
from retail_prediction.data.reading import read_transactions, resolve_files
from retail_prediction.data.sources import S3Object
from s3server import MODELS_BUCKET, S3Server

WEEKS = 6  # csv.gz and parquet, half each: a model in seconds


@pytest.fixture(scope="module")
def local_weeks(weeks: Weeks, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six generated weeks, the first three as .csv.gz, the next three rewritten as .parquet."""
    folder = tmp_path_factory.mktemp("s3-local-weeks")
    for i, path in enumerate(weeks.train[:WEEKS]):
        if i < WEEKS // 2:
            (folder / path.name).write_bytes(path.read_bytes())
        else:
            pq.write_table(read_transactions([path], required=()), folder / path.name.replace(".csv.gz", ".parquet"))
    (folder / "time.csv.gz").write_bytes(gzip.compress(b"shop_week,date_from\n200607,20060501\n"))  # not data
    return folder


@pytest.fixture(scope="module")
def s3_prefix(s3_server: S3Server, local_weeks: Path) -> str:
    """The same files uploaded under a fresh prefix of the `models` bucket (plus an object one level down)."""
    prefix = f"weeks-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    for path in sorted(local_weeks.iterdir()):
        client.upload_file(str(path), MODELS_BUCKET, f"{prefix}/{path.name}")
    client.put_object(Bucket=MODELS_BUCKET, Key=f"{prefix}/old/transactions_200501.csv.gz", Body=b"not read")
    return f"s3://{MODELS_BUCKET}/{prefix}/"


@pytest.fixture
def as_admin(s3_use_identity: Callable[..., None]) -> Iterator[None]:
    s3_use_identity()
    sources.reset()
    yield
    sources.reset()


def _names(found: list) -> list[str]:
    return [f.name for f in found]


def test_resolution_like_a_folder(as_admin: None, s3_prefix: str, local_weeks: Path) -> None:
    local = _names(resolve_files(local_weeks))
    assert _names(resolve_files(s3_prefix)) == local == _names(resolve_files(s3_prefix.rstrip("/")))
    assert all(isinstance(f, S3Object) for f in resolve_files(s3_prefix))
    assert _names(resolve_files(s3_prefix + "*.parquet")) == [n for n in local if n.endswith(".parquet")]
    assert _names(resolve_files(s3_prefix + "*/transactions_*.csv.gz")) == ["transactions_200501.csv.gz"]
    one = resolve_files(s3_prefix + local[0])
    assert one == [S3Object(MODELS_BUCKET, s3_prefix[len(f"s3://{MODELS_BUCKET}/"):] + local[0])]
    assert resolve_files(one) == one  # items of a resolution resolve to themselves (read file by file)


def test_same_table_as_the_local_copy(as_admin: None, s3_prefix: str, local_weeks: Path) -> None:
    remote = read_transactions(s3_prefix)
    local = read_transactions(local_weeks)
    assert remote.num_rows == local.num_rows > 0
    assert remote.equals(local)
    for f in resolve_files(s3_prefix)[-2:]:  # one object at a time, as the streaming train reads them
        assert read_transactions([f]).num_rows > 0


def test_read_through_web_identity(s3_server: S3Server, s3_use_web_identity: Callable[[str], Path],
                                   s3_prefix: str) -> None:
    """IRSA's path: no keys, a service-account token exchanged by boto3's chain at the server's STS."""
    s3_use_web_identity(s3_server.oidc.token("system:serviceaccount:retail-prediction:retail-train"))
    sources.reset()
    try:
        assert read_transactions(s3_prefix + "transactions_*.csv.gz").num_rows > 0
    finally:
        sources.reset()


@pytest.mark.parametrize(("where", "message"), [
    ("s3://no-such-bucket-x/weeks/", "s3://no-such-bucket-x/weeks/: no such bucket"),
    ("s3://no-such-bucket-x/weeks/*.csv.gz", "s3://no-such-bucket-x/weeks/*.csv.gz: no such bucket"),
    (f"s3://{MODELS_BUCKET}/nothing-here-{uuid.uuid4().hex[:6]}/", "no such object or prefix"),
    (f"s3://{MODELS_BUCKET}/nothing-here/*.csv.gz", "no transaction files"),
    (f"s3://{MODELS_BUCKET}/weeks/x.csv.gz?versionId=1", "is not s3://bucket/prefix/"),
])
def test_refusals_name_the_place(as_admin: None, where: str, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("?", r"\?").replace("*", r"\*")):
        resolve_files(where)


def test_bad_line_names_the_object(as_admin: None, s3_server: S3Server, weeks: Weeks) -> None:
    lines = gzip.decompress(weeks.train[0].read_bytes()).decode().splitlines()
    cells = lines[5].split(",")
    header = lines[0].split(",")
    cells[header.index("QUANTITY")] = "two"
    lines[5] = ",".join(cells)
    key = f"bad-{uuid.uuid4().hex[:6]}/transactions_200607.csv.gz"
    s3_server.client().put_object(Bucket=MODELS_BUCKET, Key=key, Body=gzip.compress("\n".join(lines).encode()))
    with pytest.raises(DataError) as error:
        read_transactions(f"s3://{MODELS_BUCKET}/{key}")
    assert str(error.value) == f"s3://{MODELS_BUCKET}/{key}, line 6, column QUANTITY: 'two' is not a number"


def test_no_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    sources.reset()
    try:
        with pytest.raises(DataError, match="no AWS credentials found"):
            resolve_files(f"s3://{MODELS_BUCKET}/weeks/")
    finally:
        sources.reset()


# --------------------------------------------------------------------------------------------------
# The command line, as a real process


def cli(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retail_prediction.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def _graph(onnx_bytes: bytes) -> bytes:
    """The ONNX model without its graph's name (the exporter names each graph with a random UUID)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    model.graph.name = ""
    return model.SerializeToString()


def test_train_from_s3_equals_training_from_the_local_copy(s3_env: Callable[..., dict[str, str]],
                                                           s3_server: S3Server, s3_prefix: str, local_weeks: Path,
                                                           weeks: Weeks, tmp_path: Path) -> None:
    key = f"trained-{uuid.uuid4().hex[:6]}/model.tar.gz"
    registry = f"s3://{MODELS_BUCKET}/registry-{uuid.uuid4().hex[:6]}"
    common = ("--validation-weeks", "2", "--threads", "1", "--seed", "0")
    remote = cli(s3_env(), "train", "--data", s3_prefix, "--out", f"s3://{MODELS_BUCKET}/{key}",
                 "--registry", registry, *common)
    assert remote.returncode == 0, remote.stderr
    said = json.loads(remote.stdout)
    assert said["uri"] == said["model"] == f"s3://{MODELS_BUCKET}/{key}" and said["registry"] == registry
    local = cli(s3_env(), "train", "--data", local_weeks, "--out", tmp_path / "local.tar.gz", *common)
    assert local.returncode == 0, local.stderr

    client = s3_server.client()
    downloaded = tmp_path / "remote.tar.gz"
    client.download_file(MODELS_BUCKET, key, str(downloaded))
    head = client.head_object(Bucket=MODELS_BUCKET, Key=key)
    remote_model = read_artifact(downloaded, expected_sha256=head["Metadata"]["sha256"])  # verified, pinned
    local_model = read_artifact(tmp_path / "local.tar.gz")
    assert _graph(remote_model.files["model.onnx"]) == _graph(local_model.files["model.onnx"])
    remote_tables, local_tables = (np.load(io.BytesIO(m.files["tables.npz"]), allow_pickle=False)
                                   for m in (remote_model, local_model))
    assert sorted(remote_tables.files) == sorted(local_tables.files)
    for name in remote_tables.files:
        assert np.array_equal(remote_tables[name], local_tables[name]), name
    version = said["model_version"]
    pushed = client.head_object(Bucket=MODELS_BUCKET, Key=f"{registry[len('s3://models/'):]}/versions/{version}/"
                                                          "model.tar.gz")
    assert pushed["Metadata"]["sha256"] == head["Metadata"]["sha256"] == said["sha256"]

    # predict and evaluate read s3:// the same way: the same predictions as from the local files
    later = weeks.later[0]
    client.upload_file(str(later), MODELS_BUCKET, f"later-{version}/{later.name}")
    scored = [cli(s3_env(), "predict", "--model", tmp_path / "local.tar.gz", "--data", data,
                  "--out", tmp_path / f"{name}.csv")
              for name, data in (("s3", f"s3://{MODELS_BUCKET}/later-{version}/"), ("local", later))]
    assert [r.returncode for r in scored] == [0, 0], scored[0].stderr
    assert (tmp_path / "s3.csv").read_text() == (tmp_path / "local.csv").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "s3://no-such-bucket-x/weeks/"], "error: s3://no-such-bucket-x/weeks/: no such bucket"),
    (["--data", f"s3://{MODELS_BUCKET}/empty-prefix-x/"],
     f"error: s3://{MODELS_BUCKET}/empty-prefix-x/: no such object or prefix"),
    (["--data", "s3://denied-bucket/weeks/"],
     "error: s3://denied-bucket/weeks/: access denied (the identity's IAM policy does not allow it)"),
    (["--data", "{local}", "--out", "s3://models/"],
     "error: model source 's3://models/' must be s3://bucket/key naming one object"),
])
def test_cli_refusals(s3_env: Callable[..., dict[str, str]], s3_server: S3Server, local_weeks: Path,
                      tmp_path: Path, args: list[str], message: str) -> None:
    admin = s3_server.client()
    if "denied-bucket" not in {b["Name"] for b in admin.list_buckets()["Buckets"]}:
        admin.create_bucket(Bucket="denied-bucket")
        admin.put_object(Bucket="denied-bucket", Key="weeks/transactions_200607.csv.gz", Body=b"x")
    args = [a.replace("{local}", str(local_weeks)) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "m.tar.gz")]
    # the reader may read and list `models` only (AWS too answers a bucket it may not see with AccessDenied)
    done = cli(s3_env(s3_server.reader if "denied" in message else None), "train", *args, *out)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr
    assert "Traceback" not in done.stderr
