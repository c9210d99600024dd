"""IAM for the deployment kit (deploy/iam/): linted with parliament, and the model-read policy's
intent proven against a real S3 server (SeaweedFS).

The proof translates the IAM policy into SeaweedFS's identity actions (``Read:bucket/prefix*``,
``List:bucket/prefix*``) with `seaweedfs_actions`, starts ``weed mini`` with an admin identity and
an "API" identity holding only those actions, and checks that the API identity can read the model
and list the model prefix, and nothing else: no other key, no other prefix (including a sibling
prefix that merely starts with the same characters), no other bucket, no write, no delete.

How faithful the mapping is (SeaweedFS is not AWS IAM):
* ``s3:GetObject`` on ``arn:aws:s3:::B/P/*`` -> ``Read:B/P/*``: SeaweedFS's Read covers GET and HEAD
  of objects whose key starts with ``P/``, as IAM's GetObject does (HEAD needs GetObject in AWS).
* ``s3:ListBucket`` on ``arn:aws:s3:::B`` with ``StringLike s3:prefix P/*`` -> ``List:B/P/*``:
  SeaweedFS checks the request's ``prefix`` parameter against it, so listing with ``Prefix=P/`` is
  allowed and listing the bucket root or another prefix is denied, as with the IAM condition.
* Anything the policy does not grant (PutObject, DeleteObject, other buckets) has no SeaweedFS
  action, so it is denied, as IAM's implicit deny does. One difference: ListAllMyBuckets is not
  granted by the policy (AWS: AccessDenied), while SeaweedFS answers ListBuckets with an empty,
  filtered list; the test accepts either, since neither reveals a bucket.
* IAM features the translation does not model (other condition keys, NotAction/NotResource,
  explicit Deny) make `seaweedfs_actions` raise, so the proof can never silently weaken.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IAM_DIR = ROOT / "deploy" / "iam"

# Example values the templates are rendered with (the docs use the same placeholders).
EXAMPLE = {
    "__MODEL_BUCKET__": "retail-models-example",
    "__MODEL_PREFIX__": "retail-prediction",
    "__ACCOUNT_ID__": "111122223333",
    "__AWS_REGION__": "ap-southeast-1",
    "__OIDC_PROVIDER__": "oidc.eks.ap-southeast-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE",
    "__GITHUB_REPOSITORY__": "example-org/retail-prediction",
    "__LOG_BUCKET__": "retail-logs-example",
    "__LOG_PREFIX__": "retail-prediction/payloads",
    "__DATA_BUCKET__": "retail-data-example",
    "__DATA_PREFIX__": "lgsr/weekly",
}

# Findings parliament reports by design on these files, each with its reason. Anything else fails.
ACCEPTED_FINDINGS = {
    # Trust policies are resource policies: parliament lints identity policies only, so it calls a
    # statement without Resource malformed and does not know our own OIDC providers.
    "irsa-trust-policy.json": {"MALFORMED", "UNKNOWN_FEDERATION_SOURCE"},
    "github-actions-trust-policy.json": {"MALFORMED", "UNKNOWN_FEDERATION_SOURCE"},
    "training-trust-policy.json": {"MALFORMED", "UNKNOWN_FEDERATION_SOURCE"},
    # `docker login` to ECR needs ecr:GetAuthorizationToken, which only exists on Resource "*".
    "github-actions-ecr-push-policy.json": {"CREDENTIALS_EXPOSURE"},
    # Attached to the API's role only when PAYLOAD_LOG_URI is an S3 prefix (docs/operations.md).
    "payload-log-write-policy.json": set(),
}


def render(path: Path, values: dict[str, str] = EXAMPLE) -> str:
    text = path.read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    left = re.findall(r"__[A-Z0-9_]+__", text)
    assert not left, f"{path.name}: placeholders without an example value: {left}"
    return text


def policy(name: str) -> dict[str, Any]:
    return json.loads(render(IAM_DIR / name))


def test_iam_files_present() -> None:
    names = {p.name for p in IAM_DIR.glob("*.json")}
    assert {"model-read-policy.json", "irsa-trust-policy.json"} <= names
    known = {"model-read-policy.json", "model-promote-policy.json", "training-policy.json"}  # all lint clean
    assert names <= set(ACCEPTED_FINDINGS) | known, "lint expectations for new files"


@pytest.mark.parametrize("path", sorted(IAM_DIR.glob("*.json")), ids=lambda p: p.name)
def test_parliament(path: Path) -> None:
    parliament = pytest.importorskip("parliament")
    result = parliament.analyze_policy_string(render(path), include_community_auditors=True)
    findings = [(f.issue, str(f.detail)) for f in result.findings]
    unexpected = [f for f in findings if f[0] not in ACCEPTED_FINDINGS.get(path.name, set())]
    assert not unexpected, f"parliament findings in {path.name}: {unexpected}"


def test_payload_log_policy_only_adds_parts_under_its_prefix() -> None:
    """The writer puts new parts and does nothing else: no read back, no list, no delete, no other prefix."""
    (statement,) = policy("payload-log-write-policy.json")["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "s3:PutObject"
    assert statement["Resource"] == f"arn:aws:s3:::{EXAMPLE['__LOG_BUCKET__']}/{EXAMPLE['__LOG_PREFIX__']}/*"
    assert not {"Condition", "NotAction", "NotResource"} & set(statement)


def test_model_read_policy_is_least_privilege() -> None:
    doc = policy("model-read-policy.json")
    bucket, prefix = EXAMPLE["__MODEL_BUCKET__"], EXAMPLE["__MODEL_PREFIX__"]
    grants = {}
    for st in doc["Statement"]:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        for action in actions:
            assert action not in grants, f"{action} granted twice"
            grants[action] = st
    assert set(grants) == {"s3:GetObject", "s3:ListBucket"}, "only read the model and list its prefix"
    assert grants["s3:GetObject"]["Resource"] == f"arn:aws:s3:::{bucket}/{prefix}/*"
    assert "Condition" not in grants["s3:GetObject"]
    listing = grants["s3:ListBucket"]
    assert listing["Resource"] == f"arn:aws:s3:::{bucket}"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}


@pytest.mark.parametrize(
    ("name", "sub"),
    [
        ("irsa-trust-policy.json", "system:serviceaccount:retail-prediction:retail-api"),
        ("github-actions-trust-policy.json", "repo:example-org/retail-prediction:ref:refs/heads/main"),
        ("training-trust-policy.json", "system:serviceaccount:retail-prediction:retail-train"),
    ],
)
def test_trust_policies_pin_subject_and_audience(name: str, sub: str) -> None:
    doc = policy(name)
    [st] = doc["Statement"]
    assert st["Effect"] == "Allow" and st["Action"] == "sts:AssumeRoleWithWebIdentity"
    federated = st["Principal"]["Federated"]
    issuer = federated.split(":oidc-provider/", 1)[1]
    assert federated.startswith(f"arn:aws:iam::{EXAMPLE['__ACCOUNT_ID__']}:oidc-provider/")
    # StringEquals (not StringLike): exactly this subject, exactly the STS audience.
    assert st["Condition"] == {"StringEquals": {f"{issuer}:sub": sub, f"{issuer}:aud": "sts.amazonaws.com"}}


def test_k8s_service_account_matches_irsa_subject() -> None:
    """The trust policy names the namespace/service account that deploy/k8s creates."""
    yaml = pytest.importorskip("yaml")
    docs = [yaml.safe_load(p.read_text()) for p in (ROOT / "deploy/k8s/base").glob("*.yaml")]
    sas = [d for d in docs if d and d.get("kind") == "ServiceAccount"]
    namespaces = [d for d in docs if d and d.get("kind") == "Namespace"]
    assert [sa["metadata"]["name"] for sa in sas] == ["retail-api"]
    assert [ns["metadata"]["name"] for ns in namespaces] == ["retail-prediction"]
    assert "eks.amazonaws.com/role-arn" in sas[0]["metadata"]["annotations"]


# ------------------------------------------------------------------------------------------------
# The policy's intent, proven on a real S3 server


def seaweedfs_actions(doc: dict[str, Any]) -> list[str]:
    """Translate an S3 read policy into SeaweedFS identity actions (see the module docstring)."""
    out: list[str] = []
    for st in doc["Statement"]:
        if st.get("Effect") != "Allow" or {"NotAction", "NotResource", "NotPrincipal"} & set(st):
            raise ValueError(f"cannot translate statement {st}")
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
        for action in actions:
            for resource in resources:
                arn = resource.removeprefix("arn:aws:s3:::")
                if action == "s3:GetObject":
                    if "Condition" in st or "/" not in arn or not arn.endswith("*"):
                        raise ValueError(f"cannot translate {action} on {resource}")
                    out.append(f"Read:{arn}")
                elif action == "s3:ListBucket":
                    cond = st.get("Condition", {})
                    if set(cond) != {"StringLike"} or set(cond["StringLike"]) != {"s3:prefix"}:
                        raise ValueError(f"cannot translate condition {cond}")
                    prefixes = cond["StringLike"]["s3:prefix"]
                    for prefix in prefixes if isinstance(prefixes, list) else [prefixes]:
                        out.append(f"List:{arn}/{prefix}")
                else:
                    raise ValueError(f"no SeaweedFS translation for {action}")
    return out


def test_translation_of_the_policy() -> None:
    bucket, prefix = EXAMPLE["__MODEL_BUCKET__"], EXAMPLE["__MODEL_PREFIX__"]
    assert seaweedfs_actions(policy("model-read-policy.json")) == [
        f"Read:{bucket}/{prefix}/*",
        f"List:{bucket}/{prefix}/*",
    ]
    with pytest.raises(ValueError):
        seaweedfs_actions({"Statement": [{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*"}]})


def s3server_module() -> Any:
    """tests/s3server.py, or a skip when it or SeaweedFS's binary is not installed."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        s3server = pytest.importorskip("s3server")
    finally:
        sys.path.pop(0)
    try:
        s3server.weed_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    return s3server


def allowed_of(calls: dict[str, Any]) -> list[str]:
    """Run each call; the names of those that were not denied (any other error fails the test)."""
    from botocore.exceptions import ClientError

    allowed = []
    for what, call in calls.items():
        try:
            call()
        except ClientError as exc:
            assert exc.response["Error"]["Code"] in {"AccessDenied", "Forbidden", "403"}, (what, exc)
        else:
            allowed.append(what)
    return allowed


@pytest.fixture(scope="module")
def policy_s3(tmp_path_factory: pytest.TempPathFactory):
    s3server = s3server_module()
    bucket = EXAMPLE["__MODEL_BUCKET__"]
    api_actions = seaweedfs_actions(policy("model-read-policy.json"))

    class PolicyServer(s3server.S3Server):
        """The test server with one more identity: the API, holding only the translated policy."""

        def _write_identities(self) -> None:
            self.api = s3server._new_credentials("RETAILAPI")
            config = {
                "identities": [
                    s3server._identity("admin", self.admin, ["Admin", "Read", "Write", "List", "Tagging"]),
                    s3server._identity("retail-api", self.api, api_actions),
                ]
            }
            self.s3_config_path.write_text(json.dumps(config, indent=2))

    server = PolicyServer(tmp_path_factory.mktemp("iam-s3"), buckets=(bucket, "another-bucket"))
    server.start()
    try:
        admin = server.client()
        prefix = EXAMPLE["__MODEL_PREFIX__"]
        admin.put_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz", Body=b"model bytes")
        admin.put_object(Bucket=bucket, Key=f"{prefix}/v2/model.tar.gz", Body=b"model v2")
        admin.put_object(Bucket=bucket, Key="secrets/db.txt", Body=b"secret")
        admin.put_object(Bucket=bucket, Key=f"{prefix}-shadow/model.tar.gz", Body=b"sibling prefix")
        admin.put_object(Bucket="another-bucket", Key=f"{prefix}/model.tar.gz", Body=b"other bucket")
        yield server, server.client(server.api, max_attempts=1)
    finally:
        server.stop()


def _code(exc_info: pytest.ExceptionInfo[Any]) -> str:
    return exc_info.value.response["Error"]["Code"]


def test_api_identity_can_read_the_model(policy_s3) -> None:
    _, api = policy_s3
    bucket, prefix = EXAMPLE["__MODEL_BUCKET__"], EXAMPLE["__MODEL_PREFIX__"]
    assert api.get_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz")["Body"].read() == b"model bytes"
    assert api.head_object(Bucket=bucket, Key=f"{prefix}/v2/model.tar.gz")["ContentLength"] == 8
    listed = api.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [
        f"{prefix}/model.tar.gz",
        f"{prefix}/v2/model.tar.gz",
    ]


def test_api_identity_can_do_nothing_else(policy_s3) -> None:
    from botocore.exceptions import ClientError

    _, api = policy_s3
    bucket, prefix = EXAMPLE["__MODEL_BUCKET__"], EXAMPLE["__MODEL_PREFIX__"]
    denied = {
        "get another key": lambda: api.get_object(Bucket=bucket, Key="secrets/db.txt"),
        "get a sibling prefix": lambda: api.get_object(Bucket=bucket, Key=f"{prefix}-shadow/model.tar.gz"),
        "get from another bucket": lambda: api.get_object(Bucket="another-bucket", Key=f"{prefix}/model.tar.gz"),
        "list the bucket root": lambda: api.list_objects_v2(Bucket=bucket),
        "list another prefix": lambda: api.list_objects_v2(Bucket=bucket, Prefix="secrets/"),
        "list another bucket": lambda: api.list_objects_v2(Bucket="another-bucket", Prefix=f"{prefix}/"),
        "overwrite the model": lambda: api.put_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz", Body=b"x"),
        "write a new key": lambda: api.put_object(Bucket=bucket, Key=f"{prefix}/new.tar.gz", Body=b"x"),
        "delete the model": lambda: api.delete_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz"),
        "create a bucket": lambda: api.create_bucket(Bucket="api-made-bucket"),
    }
    allowed = allowed_of(denied)
    assert not allowed, f"the API identity was allowed to: {allowed}"
    # ListAllMyBuckets is not granted: AWS denies it, SeaweedFS filters the list to nothing.
    try:
        names = [b["Name"] for b in api.list_buckets().get("Buckets", [])]
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied"
    else:
        assert names == []
    # The model is still intact after all those attempts.
    admin_view = policy_s3[0].client()
    assert admin_view.get_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz")["Body"].read() == b"model bytes"


def test_missing_model_is_not_found_not_forbidden(policy_s3) -> None:
    """ListBucket on the prefix lets the API tell "no such model" (404) from "not allowed" (403)."""
    from botocore.exceptions import ClientError

    _, api = policy_s3
    bucket, prefix = EXAMPLE["__MODEL_BUCKET__"], EXAMPLE["__MODEL_PREFIX__"]
    with pytest.raises(ClientError) as exc_info:
        api.head_object(Bucket=bucket, Key=f"{prefix}/does-not-exist.tar.gz")
    assert _code(exc_info) in {"404", "NoSuchKey", "NotFound"}
