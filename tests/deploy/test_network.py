"""Who may reach the pods: the base's NetworkPolicies and the ingress-alb overlay's Ingress.

Rendered with kustomize like the rest of the kit (tests/deploy/test_deploy.py validates every object
strictly); here the rules themselves: default deny both ways, ingress to the API's port only from labelled
clients, the scraper and (ingress-alb) the VPC CIDR, egress only to DNS and HTTPS; the ALB internal, HTTPS
only with a redirect, a TLS 1.3 policy and health checks on /ready.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from deploy.test_deploy import OVERLAYS, api_container, kustomize, one

API_LABELS = {"app.kubernetes.io/name": "retail-api", "app.kubernetes.io/component": "api"}
CLIENT_LABEL = {"retail-prediction/client": "true"}
SCRAPER_NAMESPACE_LABEL = {"retail-prediction/scraper": "true"}
ALB = "alb.ingress.kubernetes.io/"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def policies(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}


def _ports(docs: list[dict[str, Any]]) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in api_container(docs)["ports"]}


def _scrape_port(docs: list[dict[str, Any]]) -> int:
    """Where the scraper must reach: METRICS_PORT when set (then a container port `metrics`), else the API's."""
    config = one(docs, "ConfigMap")["data"]
    ports = _ports(docs)
    if int(config.get("METRICS_PORT", 0)):
        assert ports["metrics"] == int(config["METRICS_PORT"]), "METRICS_PORT is the container port `metrics`"
        return ports["metrics"]
    return ports["http"]


def test_default_deny_both_ways(rendered) -> None:
    _, docs = rendered
    deny = policies(docs)["default-deny-all"]
    assert deny["podSelector"] == {}, "selects every pod of the namespace"
    assert sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny, "allows nothing"


def test_ingress_only_from_clients_scraper_and_the_vpc(rendered) -> None:
    overlay, docs = rendered
    spec = policies(docs)["retail-api-ingress"]
    assert spec["podSelector"]["matchLabels"] == API_LABELS
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in API_LABELS.items()), "the policy selects the API's pods"
    assert spec["policyTypes"] == ["Ingress"]
    api_port, scrape_port = _ports(docs)["http"], _scrape_port(docs)
    peers = []
    for rule in spec["ingress"]:
        scraper_rule = any(p.get("namespaceSelector", {}).get("matchLabels") == SCRAPER_NAMESPACE_LABEL
                           for p in rule["from"])
        port = scrape_port if scraper_rule else api_port
        assert rule["ports"] == [{"protocol": "TCP", "port": port}], "one port per rule: the API's or the scrape port"
        peers.extend(rule["from"])
    clients = [p for p in peers if p.get("namespaceSelector", {}).get("matchLabels") == CLIENT_LABEL]
    assert clients and all(p["podSelector"]["matchLabels"] == CLIENT_LABEL for p in clients), \
        "a client needs the label on its namespace and on its pods"
    scraper = [p for p in peers if p.get("namespaceSelector", {}).get("matchLabels") == SCRAPER_NAMESPACE_LABEL]
    assert len(scraper) == 1 and scraper[0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    if overlay == "overlays/ingress-alb":
        assert scrape_port != api_port, "behind the ALB, /metrics and /model/info are off the API's port"
    blocks = [p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p]
    for peer in peers:
        assert "namespaceSelector" in peer or "ipBlock" in peer, f"no peer may mean 'every namespace': {peer}"
        assert peer.get("namespaceSelector", {"x": 1}) != {}, "never every namespace"
    if overlay == "overlays/ingress-alb":
        assert len(blocks) == 1
        network = ipaddress.ip_network(blocks[0])
        assert network.is_private and network.prefixlen >= 8, "the VPC's CIDR, never the internet"
    else:
        assert blocks == [], "no address range without a load balancer"


def test_egress_only_dns_and_https(rendered) -> None:
    _, docs = rendered
    spec = policies(docs)["retail-api-egress"]
    assert spec["podSelector"]["matchLabels"] == API_LABELS
    assert spec["policyTypes"] == ["Egress"]
    allowed = set()
    for rule in spec["egress"]:
        ports = {(p["protocol"], p["port"]) for p in rule["ports"]}
        allowed |= ports
        if ports & {("UDP", 53), ("TCP", 53)}:
            assert ports == {("UDP", 53), ("TCP", 53)}
            (peer,) = rule["to"]
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
            assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
        else:
            assert ports == {("TCP", 443)}, "S3 and STS over HTTPS only"
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 443)}


def test_alb_ingress_is_internal_https_only() -> None:
    docs = kustomize("overlays/ingress-alb")
    ingress = one(docs, "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert notes[ALB + "scheme"] == "internal"
    assert notes[ALB + "target-type"] == "ip"
    listeners = json.loads(notes[ALB + "listen-ports"])
    assert sorted(listeners, key=str) == [{"HTTP": 80}, {"HTTPS": 443}]
    assert notes[ALB + "ssl-redirect"] == "443", "port 80 only redirects to HTTPS"
    assert notes[ALB + "certificate-arn"].startswith("arn:aws:acm:")
    assert notes[ALB + "ssl-policy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    assert notes[ALB + "healthcheck-path"] == "/ready"
    assert notes[ALB + "success-codes"] == "200"
    service = one(docs, "Service")
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    # The ALB's idle timeout is below the app's keep-alive, so it never reuses a connection the app closed.
    attributes = dict(kv.split("=") for kv in notes[ALB + "load-balancer-attributes"].split(","))
    config = one(docs, "ConfigMap")["data"]
    assert float(config["KEEP_ALIVE_TIMEOUT_SECONDS"]) > float(attributes["idle_timeout.timeout_seconds"])
    deregistration = dict(kv.split("=") for kv in notes[ALB + "target-group-attributes"].split(","))
    grace = one(docs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert int(deregistration["deregistration_delay.timeout_seconds"]) < grace


def test_metrics_port_is_served_and_exposed_to_the_scraper_only() -> None:
    docs = kustomize("overlays/ingress-alb")
    service_ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports["metrics"]["targetPort"] == "metrics"
    ingress = one(docs, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]
    assert ingress == {"name": "http"}, "the ALB reaches the API's port, never the metrics port"


def test_alb_waf_annotation_is_documented_not_set() -> None:
    """WAF is optional: the annotation is there to uncomment, and unset in the render."""
    from deploy.test_deploy import K8S

    text = (K8S / "overlays" / "ingress-alb" / "ingress.yaml").read_text()
    assert "# alb.ingress.kubernetes.io/wafv2-acl-arn: arn:aws:wafv2:" in text
    assert ALB + "wafv2-acl-arn" not in one(kustomize("overlays/ingress-alb"), "Ingress")["metadata"]["annotations"]
