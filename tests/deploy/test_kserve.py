"""The KServe kit (deploy/kserve): an InferenceService in raw deployment mode on our ServingRuntime.

* it renders (`kubectl kustomize deploy/kserve`); the InferenceService and ServingRuntime validate against
  KServe's CRD schemas (vendored excerpts, tests/deploy/schemas/kserve) with unknown fields rejected, the
  core objects with kubernetes-validate in strict mode, like tests/deploy/test_deploy.py;
* raw deployment mode, IRSA service account, no storageUri (no storage initializer), the predictor picks our
  runtime by model format and protocol v2;
* probes on the Open Inference Protocol health routes, env names that the app's Settings read, the port
  KServe routes to, the same hardening as the Deployment of deploy/k8s, and an image name that
  `kustomize edit set image` rewrites.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_deploy import AWS_SDK_ENV, K8S, K8S_VERSIONS, ROOT, app_routes, kustomize, settings_env_names

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

KIT = ROOT / "deploy" / "kserve"
SCHEMAS = Path(__file__).resolve().parent / "schemas" / "kserve"
NAMESPACE = "retail-prediction-kserve"
# KServe's raw-mode Service targets the serving container's port, 8080 unless the container says otherwise.
KSERVE_PORT = 8080
READY, LIVE = "/v2/health/ready", "/v2/health/live"
# Set by the InferenceService; OIP_MODEL_NAME is the Settings field the Open Inference Protocol work
# (issue 17) adds: allowed by name until it is in Settings, then checked like the others.
MODEL_ENV = {"MODEL_BUCKET", "MODEL_KEY", "OIP_MODEL_NAME", "AWS_REGION", "AWS_STS_REGIONAL_ENDPOINTS"}
PENDING_SETTINGS = {"OIP_MODEL_NAME"}
CRDS = {("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.v1beta1.yaml",
        ("serving.kserve.io/v1alpha1", "ServingRuntime"): "servingruntime.v1alpha1.yaml"}  # fmt: skip


# ------------------------------------------------------------------------------------- render --


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return kustomize(str(KIT))  # an absolute path: K8S / KIT is KIT


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def runtime_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "ServingRuntime")["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def predictor(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "InferenceService")["spec"]["predictor"]


# ------------------------------------------------------------------------- CRD schema validation --


def _strict(schema: Any) -> Any:
    """The schema with unknown fields rejected where the API server would prune them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-") or k.startswith("x-kubernetes-")}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


_INT_RANGES = {"int32": 2**31, "int64": 2**63}
_FORMATS = jsonschema.FormatChecker()
for _name, _bound in _INT_RANGES.items():
    _FORMATS.checks(_name)(lambda v, b=_bound: not isinstance(v, int) or -b <= v < b)


@functools.cache
def crd_validator(api_version: str, kind: str) -> Any:
    raw = yaml.safe_load((SCHEMAS / CRDS[(api_version, kind)]).read_text())
    schema = _strict(raw["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=_FORMATS)


def _list_map_errors(schema: dict[str, Any], value: Any, path: str) -> Iterator[str]:
    """x-kubernetes-list-type: map/set, which JSON Schema cannot say: the keys of the items are unique."""
    if isinstance(value, dict):
        for key, child in value.items():
            sub = schema.get("properties", {}).get(key) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                yield from _list_map_errors(sub, child, f"{path}.{key}")
    elif isinstance(value, list):
        items = schema.get("items", {})
        if schema.get("x-kubernetes-list-type") == "map":
            names = schema["x-kubernetes-list-map-keys"]
            keys = [tuple(item.get(k, items["properties"][k].get("default")) for k in names) for item in value]
            if len(set(keys)) != len(keys):
                yield f"{path}: duplicate keys {keys}"
        for i, item in enumerate(value):
            yield from _list_map_errors(items, item, f"{path}[{i}]")


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc["apiVersion"], doc["kind"])
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    return errors + list(_list_map_errors(validator.schema, doc, ""))


def test_renders_the_kit(docs: list[dict[str, Any]]) -> None:
    assert sorted(d["kind"] for d in docs) == ["InferenceService", "Namespace", "ServiceAccount", "ServingRuntime"]
    assert one(docs, "Namespace")["metadata"]["name"] == NAMESPACE
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]


def test_kserve_objects_validate_against_the_crd_schemas(docs: list[dict[str, Any]]) -> None:
    checked = 0
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            assert crd_errors(doc) == [], doc["kind"]
            checked += 1
    assert checked == 2


def test_core_objects_validate_strict(docs: list[dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    core = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRDS]
    assert core
    for version in K8S_VERSIONS:
        for doc in core:
            kv.validate(doc, version or kv.latest_version(), strict=True)


def test_the_pod_kserve_builds_validates_strict(docs: list[dict[str, Any]]) -> None:
    """The runtime's container with the predictor's model fields merged in, in a pod with the predictor's
    pod fields: what the KServe controller makes of the two; it must be a valid, strict core Pod."""
    kv = pytest.importorskip("kubernetes_validate")
    pred = predictor(docs)
    container = copy.deepcopy(runtime_container(docs))
    container["env"] = container.get("env", []) + pred["model"].get("env", [])
    pod_fields = ("serviceAccountName", "securityContext", "terminationGracePeriodSeconds", "topologySpreadConstraints")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor", "namespace": NAMESPACE},
           "spec": {"containers": [container], "volumes": one(docs, "ServingRuntime")["spec"]["volumes"],
                    **{k: pred[k] for k in pod_fields if k in pred}}}  # fmt: skip
    for version in K8S_VERSIONS:
        kv.validate(pod, version or kv.latest_version(), strict=True)


@pytest.mark.parametrize(
    ("where", "change", "expected"),
    [
        (("spec", "predictor"), {"serviceAcountName": "retail-api"}, "Additional properties"),  # a typo
        (("spec", "predictor"), {"scaleMetric": "gpu"}, "is not one of"),
        (("spec", "predictor"), {"minReplicas": "two"}, "is not of type"),
        (("spec", "predictor", "model"), {"modelFormat": {"version": "1"}}, "'name' is a required property"),
        (("spec",), {"explainer": {}}, "Additional properties"),  # pruned from the vendored schema: rejected
    ],
)
def test_crd_validation_is_strict(docs: list[dict[str, Any]], where: tuple[str, ...], change: dict[str, Any],
                                  expected: str) -> None:  # fmt: skip
    isvc = copy.deepcopy(one(docs, "InferenceService"))
    node = isvc
    for key in where:
        node = node[key]
    node.update(change)
    assert any(expected in e for e in crd_errors(isvc)), crd_errors(isvc)


def test_crd_validation_checks_the_runtime_too(docs: list[dict[str, Any]]) -> None:
    runtime = copy.deepcopy(one(docs, "ServingRuntime"))
    runtime["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True  # a typo
    runtime["spec"]["containers"][0]["env"].append({"name": "PORT", "value": "8000"})  # a duplicate
    errors = crd_errors(runtime)
    assert any("readOnlyRootFileSystem" in e for e in errors)
    assert any("duplicate keys" in e for e in errors)
    runtime = copy.deepcopy(one(docs, "ServingRuntime"))
    runtime["spec"]["containers"][0]["ports"][0]["containerPort"] = 2**31
    assert any("int32" in e for e in crd_errors(runtime))


# ------------------------------------------------------------------------------ what KServe needs --


def _keys(value: Any) -> Iterator[str]:
    """Every mapping key in a nest of dicts and lists."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield key
            yield from _keys(child)
    elif isinstance(value, list):
        for child in value:
            yield from _keys(child)


def test_raw_deployment_without_storage_initializer(docs: list[dict[str, Any]]) -> None:
    isvc = one(docs, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    # No storageUri/storage anywhere: KServe injects a storage initializer only for those. The container
    # loads MODEL_BUCKET/MODEL_KEY from S3 itself, with the IRSA role.
    assert not {"storageUri", "storage"} & set(_keys(docs))
    assert not set(isvc["spec"]) - {"predictor"}, "no transformer or explainer"
    model = predictor(docs)["model"]
    runtime = one(docs, "ServingRuntime")
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"]: f for f in runtime["spec"]["supportedModelFormats"]}
    assert formats[model["modelFormat"]["name"]].get("autoSelect") is True
    assert model["protocolVersion"] == "v2" and runtime["spec"]["protocolVersions"] == ["v2"]
    # KServe merges predictor.model into the runtime container of this name.
    assert runtime_container(docs)["name"] == "kserve-container"
    assert "image" not in model, "the image is the runtime's: one place for `kustomize edit set image`"


def test_irsa_service_account(docs: list[dict[str, Any]]) -> None:
    sa = one(docs, "ServiceAccount")
    role = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.startswith("arn:aws:iam::") and ":role/" in role
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/sts-regional-endpoints"] == "true"
    assert predictor(docs)["serviceAccountName"] == sa["metadata"]["name"]


def test_replicas_and_autoscaling(docs: list[dict[str, Any]]) -> None:
    pred = predictor(docs)
    assert 2 <= pred["minReplicas"] <= pred["maxReplicas"]
    assert pred["scaleMetric"] == "cpu" and 0 < pred["scaleTarget"] <= 100


def test_port_and_probes(docs: list[dict[str, Any]]) -> None:
    c = runtime_container(docs)
    assert [p["containerPort"] for p in c["ports"]] == [KSERVE_PORT]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["PORT"] == str(KSERVE_PORT), "the app must listen where KServe routes"
    assert c["startupProbe"]["httpGet"]["path"] == READY
    assert c["readinessProbe"]["httpGet"]["path"] == READY
    assert c["livenessProbe"]["httpGet"]["path"] == LIVE
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in (KSERVE_PORT, c["ports"][0]["name"])
    model = predictor(docs)["model"]
    assert not {"startupProbe", "readinessProbe", "livenessProbe", "ports"} & set(model), "kept in the runtime"


def test_probe_paths_are_app_routes(docs: list[dict[str, Any]]) -> None:
    routes = app_routes()
    if not any(r.startswith("/v2") for r in routes):
        pytest.skip("the app has no Open Inference Protocol (/v2) routes yet: issue 17, the API side")
    c = runtime_container(docs)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] in routes


def test_env_names_are_settings_fields(docs: list[dict[str, Any]]) -> None:
    model_env = {e["name"] for e in predictor(docs)["model"]["env"]}
    assert model_env >= MODEL_ENV
    names = model_env | {e["name"] for e in runtime_container(docs)["env"]}
    fields = settings_env_names()
    unknown = names - fields - AWS_SDK_ENV - PENDING_SETTINGS
    assert not unknown, f"env vars that the app's Settings do not read: {sorted(unknown)}"
    isvc_name = one(docs, "InferenceService")["metadata"]["name"]
    env = {e["name"]: e["value"] for e in predictor(docs)["model"]["env"]}
    assert env["OIP_MODEL_NAME"] == isvc_name, "/v2/models/{name} is the InferenceService's name"


def test_hardened_like_the_deployment(docs: list[dict[str, Any]]) -> None:
    c = runtime_container(docs)
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["runAsNonRoot"] is True and csc["runAsUser"] == 10001 and csc["runAsGroup"] == 10001
    assert csc["capabilities"] == {"drop": ["ALL"]} and csc.get("privileged", False) is False
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    psc = predictor(docs)["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind])
    # the only writable place is an emptyDir that holds MODEL_DIR
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in one(docs, "ServingRuntime")["spec"]["volumes"]}
    model_dir = env.get("MODEL_DIR", "/tmp/retail-prediction")
    holding = [p for p in mounts if model_dir.startswith(p.rstrip("/") + "/")]
    assert holding and "emptyDir" in volumes[mounts[holding[0]]]
    delay = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert 0 < delay < predictor(docs)["terminationGracePeriodSeconds"]
    labels = one(docs, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_image_is_set_by_kustomize(docs: list[dict[str, Any]]) -> None:
    """The runtime names the image as the kustomization's `images:` entry does, so `kustomize edit set
    image retail-prediction-api=...` (as in docs/deployment.md) rewrites it; and it is the same name as the
    Deployment's in deploy/k8s."""
    kit = yaml.safe_load((KIT / "kustomization.yaml").read_text())
    [entry] = kit["images"]
    source = yaml.safe_load((KIT / "servingruntime.yaml").read_text())
    assert source["spec"]["containers"][0]["image"] == entry["name"]
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert entry["name"] in {i["name"] for i in base["images"]}
    assert runtime_container(docs)["image"] == f"{entry['newName']}:{entry['newTag']}"


def test_docs_name_what_the_kit_makes(docs: list[dict[str, Any]]) -> None:
    """docs/deployment.md's KServe section uses the kit's real names: namespace, service, IRSA subject."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text[text.index("\n## KServe\n") :]
    section = section[: section.index("\n## ", 1)]
    name = one(docs, "InferenceService")["metadata"]["name"]
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for needle in (f"{name}-predictor.{NAMESPACE}.svc", f"system:serviceaccount:{NAMESPACE}:{sa}",
                   f"/v2/models/{name}/infer", f"{name}-{NAMESPACE}.", "tritonclient.http", READY, LIVE):  # fmt: skip
        assert needle in section, needle
