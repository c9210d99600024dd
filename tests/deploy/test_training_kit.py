"""deploy/k8s/training: training as a Kubernetes Job and a weekly CronJob, validated like the rest of the kit.

Rendered with kustomize and validated strictly (kubernetes-validate, the newest schema and the oldest EKS version
supported); then the rules: the same hardened pod in both (non-root 10001, read-only root, no capabilities,
seccomp RuntimeDefault, an emptyDir for /tmp), resources sized from the training benchmarks, the Job's limits
(retries, deadline, TTL), the CronJob never running twice at once, IRSA for the service account that the training
trust policy names, egress only to DNS and HTTPS, and arguments the real `train` command accepts, pointing at the
prefixes the training policy grants.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from .test_deploy import K8S_VERSIONS, NAMESPACE, kustomize, one
from .test_iam import EXAMPLE, IAM_DIR, render

LABELS = {"app.kubernetes.io/name": "retail-train", "app.kubernetes.io/component": "training"}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return kustomize("training")


def pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [one(docs, "Job")["spec"]["template"], one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]]


def test_every_object_validates_strict(docs) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "CronJob", "Job", "NetworkPolicy", "ServiceAccount"]
    for version in K8S_VERSIONS:
        for doc in docs:
            kv.validate(doc, version or kv.latest_version(), strict=True)
    assert all(d["metadata"]["namespace"] == NAMESPACE for d in docs)


def test_job_and_cronjob_run_the_same_hardened_pod(docs) -> None:
    job, cron = pods(docs)
    assert job == cron, "one pod template for both (job.yaml and cronjob.yaml)"
    assert job["metadata"]["labels"] == LABELS
    spec = job["spec"]
    assert spec["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"] == "retail-train"
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["runAsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    [c] = spec["containers"]
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]} and csc.get("privileged", False) is False
    assert c["image"].endswith("/retail-prediction-train:latest")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert list(mounts) == ["/tmp"], "the only writable path"
    tmp = volumes[mounts["/tmp"]]["emptyDir"]
    assert tmp.get("medium") != "Memory", "spill files on disk, not against the memory limit"
    assert _quantity(tmp["sizeLimit"]) <= _quantity(c["resources"]["limits"]["ephemeral-storage"])


def _quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "": 1}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def test_resources_from_the_benchmarks(docs) -> None:
    """docs/benchmarks.md: the 50 M-line run peaks at 6.47 GB on 2 CPUs; an 8Gi pod with 2-4 CPUs holds it."""
    [c] = pods(docs)[0]["spec"]["containers"]
    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert _quantity(requests["memory"]) == _quantity(limits["memory"]) == 8 * 2**30, "guaranteed memory"
    assert _quantity(limits["memory"]) > 6.47e9
    assert 2 <= _quantity(requests["cpu"]) <= _quantity(limits["cpu"]) <= 4
    assert _quantity(requests["ephemeral-storage"]) <= _quantity(limits["ephemeral-storage"])


def test_job_limits_and_schedule(docs) -> None:
    job = one(docs, "Job")["spec"]
    cron = one(docs, "CronJob")["spec"]
    for spec in (job, cron["jobTemplate"]["spec"]):
        assert 0 <= spec["backoffLimit"] <= 2
        assert 0 < spec["activeDeadlineSeconds"] <= 6 * 3600
        assert spec["ttlSecondsAfterFinished"] > 0
    assert cron["concurrencyPolicy"] == "Forbid"
    *_, day, month, weekday = cron["schedule"].split()
    assert (day, month) == ("*", "*") and weekday.isdigit(), "weekly"
    assert cron["timeZone"] == "Etc/UTC" and cron["startingDeadlineSeconds"] > 0


def test_arguments_are_what_train_accepts(docs) -> None:
    """The container's arguments parse with the real CLI (the entrypoint is `retail-prediction train`), and
    their $(VARS) are the ConfigMap's keys."""
    from retail_prediction.cli import _parser

    [c] = pods(docs)[0]["spec"]["containers"]
    config = one(docs, "ConfigMap")
    assert [e["configMapRef"]["name"] for e in c["envFrom"]] == [config["metadata"]["name"]]
    values = {**config["data"], **{e["name"]: e["value"] for e in c.get("env", [])}}
    args = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in c["args"]]
    parsed = _parser().parse_args(["train", *args])
    assert parsed.data == [values["TRAINING_DATA"]] and parsed.registry == values["REGISTRY_ROOT"]
    assert parsed.out is None, "the model goes to the registry only"
    assert parsed.memory_budget <= 7, "a budget under the pod's 8Gi memory limit"


def test_the_kit_points_at_what_the_training_policy_grants(docs) -> None:
    config = one(docs, "ConfigMap")["data"]
    assert config["TRAINING_DATA"] == f"s3://{EXAMPLE['__DATA_BUCKET__']}/{EXAMPLE['__DATA_PREFIX__']}/"
    assert config["REGISTRY_ROOT"] == f"s3://{EXAMPLE['__MODEL_BUCKET__']}/{EXAMPLE['__MODEL_PREFIX__']}"
    trust = render(IAM_DIR / "training-trust-policy.json")
    assert f"system:serviceaccount:{NAMESPACE}:retail-train" in trust
    role = one(docs, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/retail-prediction-train", role)


def test_network_policy_only_dns_and_https_out(docs) -> None:
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == {"matchLabels": LABELS}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and not policy.get("ingress"), "receives nothing"
    dns, https = policy["egress"]
    assert dns["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                          "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert sorted((p["protocol"], p["port"]) for p in dns["ports"]) == [("TCP", 53), ("UDP", 53)]
    assert https["ports"] == [{"protocol": "TCP", "port": 443}]
    # the same egress as the API's pods (deploy/k8s/base)
    [base] = [d for d in kustomize("base") if d["kind"] == "NetworkPolicy"
              and d["metadata"]["name"] == "retail-api-egress"]
    assert base["spec"]["egress"] == policy["egress"]
