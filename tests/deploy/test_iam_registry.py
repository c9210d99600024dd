"""The registry's two identities, proven on a real S3 server (SeaweedFS) as `test_iam.py` proves the read policy:

* the promoter (CI or an operator) holds `deploy/iam/model-promote-policy.json` rendered with the registry's
  prefix: it pushes, lists, promotes and rolls back (holding the lock under ``locks/``), and writes nothing
  outside ``versions/``, ``current/``, ``history/`` and ``locks/`` of that prefix;
* the serving identity holds `model-read-policy.json` rendered with ``<registry prefix>/current`` as its prefix:
  it reads and lists ``current/`` and nothing else of the registry (no version, no history, no write).

How faithful the translation is, beyond `test_iam.py`'s notes: ``s3:PutObject`` on ``B/P/*`` becomes SeaweedFS's
``Write:B/P/*``, which also allows DeleteObject on those keys (SeaweedFS has no separate delete action), so
"no delete but the lock's" is proven on the policy text (``s3:DeleteObject`` on ``locks/*`` only), not on the
server. The policy's condition
that writes under ``versions/`` and ``history/`` carry ``If-None-Match`` (AWS enforces it: an overwrite without
the header is denied) is not modelled by SeaweedFS; the registry always sends the header there, and SeaweedFS
honours the header itself (a second create is ``PreconditionFailed``), which the tests below rely on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from archives import edit_json, replace_members

from .test_iam import EXAMPLE, IAM_DIR, allowed_of, render, s3server_module, seaweedfs_actions

BUCKET, PREFIX = EXAMPLE["__MODEL_BUCKET__"], EXAMPLE["__MODEL_PREFIX__"]
CREATE_ONLY = {"Null": {"s3:if-none-match": "false"}}


def rendered(name: str, prefix: str = PREFIX) -> dict[str, Any]:
    return json.loads(render(IAM_DIR / name, {**EXAMPLE, "__MODEL_PREFIX__": prefix}))


def statements(doc: dict[str, Any]) -> list[tuple[str, list[str], dict[str, Any] | None]]:
    out = []
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow"
        for action in st["Action"] if isinstance(st["Action"], list) else [st["Action"]]:
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            out.append((action, resources, st.get("Condition")))
    return out


def promoter_actions(doc: dict[str, Any]) -> list[str]:
    """`seaweedfs_actions` plus ``s3:PutObject`` and ``s3:DeleteObject`` -> ``Write`` (see the module docstring
    for what it loses)."""
    writes, others = [], []
    for st in doc["Statement"]:
        (writes if st["Action"] in ("s3:PutObject", "s3:DeleteObject") else others).append(st)
    out = seaweedfs_actions({"Statement": others})
    for st in writes:
        if st.get("Condition") not in (None, CREATE_ONLY) or {"NotAction", "NotResource"} & set(st):
            raise ValueError(f"cannot translate statement {st}")
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for resource in resources:
            arn = resource.removeprefix("arn:aws:s3:::")
            if "/" not in arn or not arn.endswith("/*"):
                raise ValueError(f"cannot translate s3:PutObject on {resource}")
            out.append(f"Write:{arn}")
    return out


def test_promote_policy_is_least_privilege() -> None:
    grants = statements(rendered("model-promote-policy.json"))
    arn = f"arn:aws:s3:::{BUCKET}/{PREFIX}"
    assert {a for a, _, _ in grants} == {"s3:GetObject", "s3:ListBucket", "s3:PutObject", "s3:DeleteObject"}
    puts = {(r, json.dumps(c)) for a, rs, c in grants if a == "s3:PutObject" for r in rs}
    assert puts == {(f"{arn}/versions/*", json.dumps(CREATE_ONLY)), (f"{arn}/history/*", json.dumps(CREATE_ONLY)),
                    (f"{arn}/locks/*", json.dumps(CREATE_ONLY)), (f"{arn}/current/*", "null")}
    # Deletes: the promotion lock only (never a version, the history or the served model).
    assert [(r, c) for a, r, c in grants if a == "s3:DeleteObject"] == [([f"{arn}/locks/*"], None)]
    assert [(r, c) for a, r, c in grants if a == "s3:GetObject"] == [([f"{arn}/*"], None)]
    assert [(r, c) for a, r, c in grants if a == "s3:ListBucket"] == [
        ([f"arn:aws:s3:::{BUCKET}"], {"StringLike": {"s3:prefix": [f"{PREFIX}/*"]}})]


def test_serving_policy_rendered_for_the_registry_reads_current_only() -> None:
    assert seaweedfs_actions(rendered("model-read-policy.json", f"{PREFIX}/current")) == [
        f"Read:{BUCKET}/{PREFIX}/current/*", f"List:{BUCKET}/{PREFIX}/current/*"]
    assert promoter_actions(rendered("model-promote-policy.json")) == [
        f"Read:{BUCKET}/{PREFIX}/*", f"List:{BUCKET}/{PREFIX}/*", f"Write:{BUCKET}/{PREFIX}/versions/*",
        f"Write:{BUCKET}/{PREFIX}/history/*", f"Write:{BUCKET}/{PREFIX}/locks/*", f"Write:{BUCKET}/{PREFIX}/current/*",
        f"Write:{BUCKET}/{PREFIX}/locks/*"]


@pytest.fixture(scope="module")
def registry_s3(tmp_path_factory: pytest.TempPathFactory):
    s3server = s3server_module()
    promoter = promoter_actions(rendered("model-promote-policy.json"))
    serving = seaweedfs_actions(rendered("model-read-policy.json", f"{PREFIX}/current"))

    class RegistryServer(s3server.S3Server):
        """Admin, the promoter and the serving identity, each holding its translated policy."""

        def _write_identities(self) -> None:
            self.promoter = s3server._new_credentials("PROMOTER")
            self.serving = s3server._new_credentials("SERVING")
            self.s3_config_path.write_text(json.dumps({"identities": [
                s3server._identity("admin", self.admin, ["Admin", "Read", "Write", "List", "Tagging"]),
                s3server._identity("promoter", self.promoter, promoter),
                s3server._identity("serving", self.serving, serving),
            ]}))

    server = RegistryServer(tmp_path_factory.mktemp("iam-registry-s3"), buckets=(BUCKET, "another-bucket"))
    server.start()
    try:
        admin = server.client()
        admin.put_object(Bucket=BUCKET, Key="secrets/db.txt", Body=b"secret")
        admin.put_object(Bucket=BUCKET, Key=f"{PREFIX}-shadow/model.tar.gz", Body=b"sibling prefix")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def promoted(registry_s3, trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """As the promoter only: push v1 and v2, promote v1, promote v2, roll back: v1 is current."""
    from retail_prediction.registry import operations as ops
    from retail_prediction.registry.root import S3Root

    folder = tmp_path_factory.mktemp("iam-registry-models")
    archives = {v: replace_members(trained_model, folder / f"{v}.tar.gz", v,
                                   metadata_json=edit_json(trained_model, "metadata.json", model_version=v))
                for v in ("v1", "v2")}
    root = S3Root(BUCKET, PREFIX, client=registry_s3.client(registry_s3.promoter, max_attempts=1))
    work = folder / "work"
    for archive in archives.values():
        ops.push(root, archive, by="ci")
    ops.promote(root, "v1", work)
    ops.promote(root, "v2", work)
    ops.rollback(root, work)
    return {"root": root, "rows": ops.list_versions(root, work), "archives": archives}


def test_promoter_pushes_promotes_and_rolls_back(promoted: dict[str, Any]) -> None:
    assert [(r["version"], r["current"]) for r in promoted["rows"]] == [("v1", True), ("v2", False)]
    assert len(promoted["root"].list("history")) == 3


def test_promoter_writes_nothing_else(registry_s3, promoted: dict[str, Any]) -> None:
    from botocore.exceptions import ClientError

    promoter = registry_s3.client(registry_s3.promoter, max_attempts=1)
    allowed = allowed_of({
        "write the prefix itself": lambda: promoter.put_object(Bucket=BUCKET, Key=f"{PREFIX}/model.tar.gz", Body=b"x"),
        "write another folder": lambda: promoter.put_object(Bucket=BUCKET, Key=f"{PREFIX}/x/y", Body=b"x"),
        "write a sibling prefix": lambda: promoter.put_object(Bucket=BUCKET, Key=f"{PREFIX}-shadow/model.tar.gz",
                                                              Body=b"x"),
        "write another key": lambda: promoter.put_object(Bucket=BUCKET, Key="secrets/db.txt", Body=b"x"),
        "read another key": lambda: promoter.get_object(Bucket=BUCKET, Key="secrets/db.txt"),
        "list the bucket root": lambda: promoter.list_objects_v2(Bucket=BUCKET),
        "write another bucket": lambda: promoter.put_object(Bucket="another-bucket", Key=f"{PREFIX}/versions/v9/m",
                                                            Body=b"x"),
        "delete another key": lambda: promoter.delete_object(Bucket=BUCKET, Key="secrets/db.txt"),
        "create a bucket": lambda: promoter.create_bucket(Bucket="promoter-made-bucket"),
    })
    assert not allowed, f"the promoter was allowed to: {allowed}"
    with pytest.raises(ClientError) as again:  # a version is written once (the header the registry sends)
        promoter.put_object(Bucket=BUCKET, Key=f"{PREFIX}/versions/v1/model.tar.gz", Body=b"x", IfNoneMatch="*")
    assert again.value.response["Error"]["Code"] == "PreconditionFailed"


def test_serving_identity_reads_current_only(registry_s3, promoted: dict[str, Any]) -> None:
    serving = registry_s3.client(registry_s3.serving, max_attempts=1)
    body = serving.get_object(Bucket=BUCKET, Key=f"{PREFIX}/current/model.tar.gz")["Body"].read()
    assert body == promoted["archives"]["v1"].read_bytes()
    listed = serving.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/current/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [f"{PREFIX}/current/model.tar.gz",
                                                            f"{PREFIX}/current/promotion.json"]
    version_key = f"{PREFIX}/versions/v2/model.tar.gz"
    allowed = allowed_of({
        "read a version": lambda: serving.get_object(Bucket=BUCKET, Key=version_key),
        "read the history": lambda: serving.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/history/"),
        "list the registry": lambda: serving.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/"),
        "replace the served model": lambda: serving.put_object(Bucket=BUCKET, Key=f"{PREFIX}/current/model.tar.gz",
                                                               Body=b"x"),
        "write a version": lambda: serving.put_object(Bucket=BUCKET, Key=f"{PREFIX}/versions/v9/model.tar.gz",
                                                      Body=b"x"),
        "delete the served model": lambda: serving.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/current/model.tar.gz"),
    })
    assert not allowed, f"the serving identity was allowed to: {allowed}"
