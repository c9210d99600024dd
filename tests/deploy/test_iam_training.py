"""The training role's policy (deploy/iam/training-policy.json), proven on a real S3 server (SeaweedFS) as
`test_iam.py` and `test_iam_registry.py` prove the others: an identity holding only its translation trains from the
data prefix (`retail-prediction train --data s3://… --registry s3://…` as a real process) and pushes a version,
and is denied everything else. Translation and its limits: `test_iam_registry.py`'s `promoter_actions`
(``s3:PutObject`` with the create-only condition -> SeaweedFS ``Write``, which also allows deletes on those keys, so
"no delete" is proven on the text)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .test_iam import EXAMPLE, IAM_DIR, allowed_of, render, s3server_module
from .test_iam_registry import CREATE_ONLY, promoter_actions, statements

DATA_BUCKET, DATA_PREFIX = EXAMPLE["__DATA_BUCKET__"], EXAMPLE["__DATA_PREFIX__"]
MODEL_BUCKET, MODEL_PREFIX = EXAMPLE["__MODEL_BUCKET__"], EXAMPLE["__MODEL_PREFIX__"]


def training_policy() -> dict[str, Any]:
    return json.loads(render(IAM_DIR / "training-policy.json"))


def test_training_policy_is_least_privilege() -> None:
    grants = statements(training_policy())
    assert grants == [
        ("s3:GetObject", [f"arn:aws:s3:::{DATA_BUCKET}/{DATA_PREFIX}/*"], None),
        ("s3:ListBucket", [f"arn:aws:s3:::{DATA_BUCKET}"], {"StringLike": {"s3:prefix": [f"{DATA_PREFIX}/*"]}}),
        ("s3:PutObject", [f"arn:aws:s3:::{MODEL_BUCKET}/{MODEL_PREFIX}/versions/*"], CREATE_ONLY),
    ], "read and list the data, create registry versions; no delete, no current/, no read of the registry"
    assert promoter_actions(training_policy()) == [
        f"Read:{DATA_BUCKET}/{DATA_PREFIX}/*", f"List:{DATA_BUCKET}/{DATA_PREFIX}/*",
        f"Write:{MODEL_BUCKET}/{MODEL_PREFIX}/versions/*"]


@pytest.fixture(scope="module")
def training_s3(tmp_path_factory: pytest.TempPathFactory, weeks):
    s3server = s3server_module()
    trainer = promoter_actions(training_policy())

    class TrainingServer(s3server.S3Server):
        """Admin and the training identity, holding only the translated policy."""

        def _write_identities(self) -> None:
            self.trainer = s3server._new_credentials("TRAINER")
            self.s3_config_path.write_text(json.dumps({"identities": [
                s3server._identity("admin", self.admin, ["Admin", "Read", "Write", "List", "Tagging"]),
                s3server._identity("trainer", self.trainer, trainer),
            ]}))

    server = TrainingServer(tmp_path_factory.mktemp("iam-training-s3"),
                            buckets=(DATA_BUCKET, MODEL_BUCKET, "another-bucket"))
    server.start()
    try:
        admin = server.client()
        for path in weeks.train[:4]:
            admin.upload_file(str(path), DATA_BUCKET, f"{DATA_PREFIX}/{path.name}")
            admin.upload_file(str(path), DATA_BUCKET, f"{DATA_PREFIX}-shadow/{path.name}")  # a sibling prefix
        admin.put_object(Bucket=DATA_BUCKET, Key="secrets/db.txt", Body=b"secret")
        admin.put_object(Bucket=MODEL_BUCKET, Key=f"{MODEL_PREFIX}/current/model.tar.gz", Body=b"served model")
        yield server
    finally:
        server.stop()


def _train(server: Any, tmp_path: Path, data: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(server.env(server.trainer))
    return subprocess.run([sys.executable, "-m", "retail_prediction.cli", "train", "--data", data,
                           "--registry", f"s3://{MODEL_BUCKET}/{MODEL_PREFIX}", "--validation-weeks", "1",
                           "--threads", "1"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.fixture(scope="module")
def trained(training_s3, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    done = _train(training_s3, tmp_path_factory.mktemp("train-run"), f"s3://{DATA_BUCKET}/{DATA_PREFIX}/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_training_identity_trains_from_s3_and_pushes_a_version(training_s3, trained: dict[str, Any]) -> None:
    admin = training_s3.client()
    key = f"{MODEL_PREFIX}/versions/{trained['version']}"
    assert admin.head_object(Bucket=MODEL_BUCKET, Key=f"{key}/model.tar.gz")["Metadata"]["sha256"] == trained["sha256"]
    assert json.loads(admin.get_object(Bucket=MODEL_BUCKET, Key=f"{key}/metrics.json")["Body"].read())["version"] \
        == trained["version"]
    assert admin.get_object(Bucket=MODEL_BUCKET, Key=f"{MODEL_PREFIX}/current/model.tar.gz")["Body"].read() \
        == b"served model", "training never touches what the API serves"


def test_the_training_identity_may_do_nothing_else(training_s3, trained: dict[str, Any]) -> None:
    trainer = training_s3.client(training_s3.trainer, max_attempts=1)
    name = f"{DATA_PREFIX}/transactions_200607.csv.gz"
    version = f"{MODEL_PREFIX}/versions/{trained['version']}/model.tar.gz"
    allowed = allowed_of({
        "read another key": lambda: trainer.get_object(Bucket=DATA_BUCKET, Key="secrets/db.txt"),
        "read a sibling prefix": lambda: trainer.get_object(Bucket=DATA_BUCKET,
                                                            Key=f"{DATA_PREFIX}-shadow/transactions_200607.csv.gz"),
        "list the data bucket's root": lambda: trainer.list_objects_v2(Bucket=DATA_BUCKET),
        "list a sibling prefix": lambda: trainer.list_objects_v2(Bucket=DATA_BUCKET, Prefix=f"{DATA_PREFIX}-shadow/"),
        "write the data": lambda: trainer.put_object(Bucket=DATA_BUCKET, Key=name, Body=b"x"),
        "delete the data": lambda: trainer.delete_object(Bucket=DATA_BUCKET, Key=name),
        "read a version back": lambda: trainer.get_object(Bucket=MODEL_BUCKET, Key=version),
        "list the registry": lambda: trainer.list_objects_v2(Bucket=MODEL_BUCKET, Prefix=f"{MODEL_PREFIX}/"),
        "replace the served model": lambda: trainer.put_object(Bucket=MODEL_BUCKET,
                                                               Key=f"{MODEL_PREFIX}/current/model.tar.gz", Body=b"x"),
        "write the history": lambda: trainer.put_object(Bucket=MODEL_BUCKET, Key=f"{MODEL_PREFIX}/history/x.json",
                                                        Body=b"x", IfNoneMatch="*"),
        "write another bucket": lambda: trainer.put_object(Bucket="another-bucket", Key="x", Body=b"x"),
    })
    assert not allowed, f"the training identity was allowed to: {allowed}"


def test_training_from_elsewhere_is_denied_in_one_line(training_s3, tmp_path: Path) -> None:
    done = _train(training_s3, tmp_path, f"s3://{DATA_BUCKET}/{DATA_PREFIX}-shadow/")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"error: s3://{DATA_BUCKET}/{DATA_PREFIX}-shadow/: access denied (the identity's IAM policy does not allow it)")
    assert "Traceback" not in done.stderr
