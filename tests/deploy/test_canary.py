"""The canary overlay (deploy/k8s/overlays/canary): prod plus a second Deployment for the candidate model.

It renders and validates strictly; the canary's pod spec is the stable one's (copied by kustomize, so the two
cannot drift) except its model config and identity; the two Deployments' selectors never claim each other's
pods while the Service selects both; the HPA and PDB still govern the stable pods only."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from .test_deploy import K8S_VERSIONS, kustomize


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return kustomize("overlays/canary")


def _get(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    def named(n: str) -> bool:  # generated ConfigMaps carry a hash suffix
        return n == name or (kind == "ConfigMap" and n.rsplit("-", 1)[0] == name)

    found = [d for d in docs if d["kind"] == kind and named(d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_renders_and_validates_strict(docs: list[dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for version in K8S_VERSIONS:
        for doc in docs:
            kv.validate(doc, version or kv.latest_version(), strict=True)
    assert all(d["metadata"].get("namespace") == "retail-prediction" for d in docs if d["kind"] != "Namespace")


def test_the_canary_runs_the_stable_pod_spec_with_its_own_model_and_identity(docs: list[dict[str, Any]]) -> None:
    stable = _get(docs, "Deployment", "retail-api")
    canary = _get(docs, "Deployment", "retail-api-canary")
    s_spec, c_spec = stable["spec"]["template"]["spec"], canary["spec"]["template"]["spec"]
    assert c_spec["serviceAccountName"] == "retail-api-canary" != s_spec["serviceAccountName"]
    canary_config = c_spec["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    assert canary_config.startswith("retail-api-canary-config-")
    # Everything else is the same pod: image, probes, resources, hardening, volumes.
    same = copy.deepcopy(c_spec)
    same["serviceAccountName"] = s_spec["serviceAccountName"]
    same["containers"][0]["envFrom"] = s_spec["containers"][0]["envFrom"]
    for constraint in same["topologySpreadConstraints"]:
        constraint["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] = "api"
    assert same == s_spec
    config = _get(docs, "ConfigMap", "retail-api-canary-config")["data"]
    assert "/versions/" in config["MODEL_KEY"]
    assert _get(docs, "ServiceAccount", "retail-api-canary")["metadata"]["annotations"][
        "eks.amazonaws.com/role-arn"].endswith("-canary")


def test_selectors_split_the_pods_and_the_service_takes_both(docs: list[dict[str, Any]]) -> None:
    stable = _get(docs, "Deployment", "retail-api")
    canary = _get(docs, "Deployment", "retail-api-canary")
    s_labels, c_labels = (d["spec"]["template"]["metadata"]["labels"] for d in (stable, canary))
    s_sel, c_sel = (d["spec"]["selector"]["matchLabels"] for d in (stable, canary))
    assert _matches(s_sel, s_labels) and not _matches(s_sel, c_labels)
    assert _matches(c_sel, c_labels) and not _matches(c_sel, s_labels)
    service = _get(docs, "Service", "retail-api")["spec"]["selector"]
    assert _matches(service, s_labels) and _matches(service, c_labels)
    assert _get(docs, "HorizontalPodAutoscaler", "retail-api")["spec"]["scaleTargetRef"]["name"] == "retail-api"
    pdb = _get(docs, "PodDisruptionBudget", "retail-api")["spec"]["selector"]["matchLabels"]
    assert _matches(pdb, s_labels) and not _matches(pdb, c_labels)
    hpa = _get(docs, "HorizontalPodAutoscaler", "retail-api")["spec"]
    assert canary["spec"]["replicas"] == 1 < hpa["minReplicas"]


def test_the_network_policies_cover_the_canary_pods_too(docs: list[dict[str, Any]]) -> None:
    canary = _get(docs, "Deployment", "retail-api-canary")["spec"]["template"]["metadata"]["labels"]
    stable = _get(docs, "Deployment", "retail-api")["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["name"] for p in policies} >= {"retail-api-ingress", "retail-api-egress"}
    for policy in policies:  # whatever lets the stable pods talk lets the canary pods talk the same way
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        assert _matches(selector, stable) == _matches(selector, canary), policy["metadata"]["name"]
