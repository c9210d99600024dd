"""The monitoring kit (deploy/monitoring) and the autoscaling overlay (deploy/k8s/overlays/prod-rps):

* the kit renders with kustomize; the ServiceMonitor and PrometheusRule pass their CRDs' JSON Schemas strictly
  (tests/deploy/schemas), the dashboard ConfigMap passes kubernetes-validate strictly;
* the ServiceMonitor selects the base Service by its labels, port name and namespace;
* the rules pass `promtool check rules` and the promtool unit tests (tests/deploy/promtool), every alert has
  a unit test, a severity, a summary, a description and a runbook link to its section of docs/operations.md;
* the dashboard JSON is what deploy/monitoring/dashboard.py builds, and every query parses;
* every metric the rules, the dashboard and the adapter use is in a real app's /metrics;
* the autoscaling overlay validates strictly and differs from prod only by the HPA's request-rate metric,
  which is the metric the prometheus-adapter rule serves.

promtool is Debian's (package prometheus): skipped locally when missing, a failure under CI (need_tool).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .monitoring_kit import (
    MONITORING,
    ROOT,
    RUNBOOK_BASE,
    adapter_query,
    adapter_rules,
    alerts,
    dashboard_module,
    dashboard_queries,
    fill_variables,
    metric_names,
    rule_groups,
    rules,
    runbook_anchors,
    write_rules,
)
from .test_deploy import K8S_VERSIONS, NAMESPACE, kustomize, need_tool, one

SCHEMAS = Path(__file__).with_name("schemas")
PROMTOOL_TESTS = Path(__file__).with_name("promtool") / "rules_test.yaml"
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor_v1.json",
               ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule_v1.json"}


@pytest.fixture(scope="module")
def kit() -> list[dict[str, Any]]:
    return kustomize("../monitoring")


def test_kit_renders_and_validates_strictly(kit: list[dict[str, Any]]) -> None:
    from jsonschema import Draft202012Validator, FormatChecker

    kv = pytest.importorskip("kubernetes_validate")
    assert sorted(d["kind"] for d in kit) == ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
    for doc in kit:
        assert doc["metadata"]["namespace"] == NAMESPACE
        schema_file = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if schema_file is None:
            for version in K8S_VERSIONS:
                kv.validate(doc, version or kv.latest_version(), strict=True)
            continue
        schema = json.loads((SCHEMAS / schema_file).read_text())
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(doc)]
        assert not errors, f"{doc['kind']}: {errors}"


def test_crd_schemas_are_strict() -> None:
    """The check above means something: the schemas refuse an unknown field at any depth."""
    from jsonschema import Draft202012Validator

    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    schema = json.loads((SCHEMAS / "servicemonitor_v1.json").read_text())
    assert not Draft202012Validator(schema).is_valid(monitor)
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    rule["spec"]["groups"][1]["rules"][0]["severity"] = "critical"  # belongs under labels
    schema = json.loads((SCHEMAS / "prometheusrule_v1.json").read_text())
    assert not Draft202012Validator(schema).is_valid(rule)


def test_servicemonitor_selects_the_api_service(kit: list[dict[str, Any]]) -> None:
    base = kustomize("base")
    service, monitor = one(base, "Service"), one(kit, "ServiceMonitor")
    labels = service["metadata"]["labels"]
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"] and all(labels.get(k) == v for k, v in selector["matchLabels"].items())
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    # the Service's port leads to the container port the app listens on
    container = one(base, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}


def test_dashboard_configmap_carries_the_built_json(kit: list[dict[str, Any]]) -> None:
    config = one(kit, "ConfigMap")
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    [text] = config["data"].values()
    assert json.loads(text) == dashboard_module().build()


# ------------------------------------------------------------------------------------------ rules --


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The manifest's groups as rules.yaml beside a copy of the promtool unit tests (paths are relative)."""
    write_rules(tmp_path / "rules.yaml")
    shutil.copy(PROMTOOL_TESTS, tmp_path / PROMTOOL_TESTS.name)
    return tmp_path


def test_promtool_check_rules(rules_dir: Path) -> None:
    promtool = need_tool("promtool")
    proc = subprocess.run([promtool, "check", "rules", str(rules_dir / "rules.yaml")], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_unit_tests(rules_dir: Path) -> None:
    promtool = need_tool("promtool")
    proc = subprocess.run([promtool, "test", "rules", str(rules_dir / PROMTOOL_TESTS.name)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_catch_a_wrong_threshold(rules_dir: Path) -> None:
    """The unit tests bind the thresholds: the drift alert at 0.5 instead of 0.25 fails them."""
    promtool = need_tool("promtool")
    spec = rule_groups()
    [drift] = [r for g in spec["groups"] for r in g["rules"] if r.get("alert") == "RetailPredictionInputDrift"]
    assert drift["expr"].endswith("> 0.25")
    drift["expr"] = drift["expr"].replace("> 0.25", "> 0.5")
    (rules_dir / "rules.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.run([promtool, "test", "rules", str(rules_dir / PROMTOOL_TESTS.name)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "RetailPredictionInputDrift" in proc.stdout + proc.stderr


def test_every_alert_is_unit_tested_firing() -> None:
    tests = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    assert {a["alert"] for a in alerts()} == fired


def test_alerts_have_severity_annotations_and_a_runbook() -> None:
    anchors = runbook_anchors()
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    for alert in alerts():
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        notes = alert["annotations"]
        assert notes["summary"] and notes["description"], alert["alert"]
        url, _, anchor = notes["runbook_url"].partition("#")
        assert url == RUNBOOK_BASE and anchor == alert["alert"].lower(), notes["runbook_url"]
        assert anchor in anchors, f"docs/operations.md has no section {alert['alert']}"


def test_the_issue_alerts_exist() -> None:
    """Error ratio, p99 over the target, no ready model, reload failures, source checks, input/prediction drift."""
    exprs = {a["alert"]: a["expr"] for a in alerts()}
    recorded = {r["record"]: r["expr"] for r in rules() if "record" in r}

    def expanded(expr: str) -> str:
        """The expression with the recording rules it reads spelled out (recursively)."""
        for name, body in recorded.items():
            if name in expr:
                expr += " " + expanded(body)
        return expr

    def uses(alert: str, metric: str) -> bool:
        return metric in expanded(exprs[alert])

    assert uses("RetailPredictionHighErrorRatio", 'status=~"5.."')
    assert uses("RetailPredictionHighLatencyP99", "retail_prediction_http_request_duration_seconds_bucket")
    assert "0.99" in recorded["job_route:retail_prediction_http_request_duration_seconds:p99_5m"]
    assert uses("RetailPredictionNoReadyModel", "retail_prediction_model_ready")
    assert uses("RetailPredictionModelLoadFailures", 'retail_prediction_model_loads_total{result="failure"}')
    assert uses("RetailPredictionSourceCheckFailures", "retail_prediction_source_check_failures_total")
    for alert, metric in (("RetailPredictionInputDrift", "retail_prediction_input_drift_psi"),
                          ("RetailPredictionPredictionDrift", "retail_prediction_prediction_drift_psi")):
        assert uses(alert, metric) and exprs[alert].endswith("> 0.25")
        assert next(a for a in alerts() if a["alert"] == alert)["for"] == "30m"


# -------------------------------------------------------------------------------------- dashboard --


def test_dashboard_json_is_what_the_script_builds() -> None:
    module = dashboard_module()
    assert (MONITORING / "dashboard.json").read_text() == module.render(), (
        "deploy/monitoring/dashboard.json is stale: run python deploy/monitoring/dashboard.py")
    proc = subprocess.run([sys.executable, str(MONITORING / "dashboard.py"), "--check"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_dashboard_covers_the_issue_panels() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard_module().build())))
    recorded = json.dumps(dashboard_module().build()["panels"])
    for metric in ("retail_prediction_model_info", "retail_prediction_model_loads_total",
                   "retail_prediction_drift_window_baskets", "retail_prediction_source_check_failures_total",
                   "retail_prediction_payload_log_records_total"):
        assert metric in used, metric
    for rule in ("job_route_status:retail_prediction_http_requests:rate5m",   # traffic
                 "job:retail_prediction_predict_error_ratio:ratio_rate5m",    # errors
                 "job_route_le:retail_prediction_http_request_duration_seconds_bucket:rate5m",  # latency
                 "job_label:retail_prediction_predictions:rate5m",            # predictions by class
                 "job_feature:retail_prediction_input_drift_psi:avg", "job:retail_prediction_prediction_drift_psi:avg"):
        assert rule in recorded, rule
    records = {r["record"] for r in rules() if "record" in r}
    assert {name for name in re.findall(r"\w+:[\w:]+", recorded) if not name.startswith("query")} <= records
    psi = [p for p in dashboard_module().build()["panels"] if "PSI" in p["title"]]
    for panel in psi:
        steps = [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        assert steps == [None, 0.1, 0.25], panel["title"]


def test_dashboard_and_adapter_queries_parse(tmp_path: Path) -> None:
    """promtool parses every query: as the expressions of a rules file (it checks PromQL, not the data)."""
    promtool = need_tool("promtool")
    queries = [fill_variables(expr) for _, expr in dashboard_queries(dashboard_module().build())]
    queries += [adapter_query(rule, NAMESPACE, ["retail-api-0"]) for rule in adapter_rules()]
    group = {"name": "queries", "rules": [{"record": f"query:{i}", "expr": q} for i, q in enumerate(queries)]}
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------- the app's real metrics --


def _exposed_names(text: str) -> set[str]:
    """Every series name /metrics can show: the samples', and each family's declared (counters with _total,
    histograms with _bucket/_sum/_count), so labelled families with no sample yet count too."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


@pytest.fixture(scope="module")
def app_metrics(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """The names in /metrics of a real app serving the synthetic model, after one prediction."""
    from fastapi.testclient import TestClient

    from retail_prediction.api import Settings, create_app
    from retail_prediction.api.schemas import EXAMPLE_REQUEST

    settings = Settings(model_uri=str(trained_model), model_poll_seconds=0,
                        model_dir=tmp_path_factory.mktemp("metrics-app"))  # fmt: skip
    with TestClient(create_app(settings)) as client:
        for _ in range(300):
            if client.get("/ready").status_code == 200:
                break
            time.sleep(0.1)
        assert client.post("/predict", json=EXAMPLE_REQUEST).status_code == 200
        yield _exposed_names(client.get("/metrics").text)


def test_rules_use_only_exposed_metrics(app_metrics: set[str]) -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert used and not used - app_metrics, f"not in the app's /metrics: {sorted(used - app_metrics)}"


def test_dashboard_uses_only_exposed_metrics(app_metrics: set[str]) -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries(dashboard_module().build())))
    assert used and not used - app_metrics, f"not in the app's /metrics: {sorted(used - app_metrics)}"


def test_adapter_uses_only_exposed_metrics(app_metrics: set[str]) -> None:
    for rule in adapter_rules():
        used = metric_names(rule["seriesQuery"]) | metric_names(rule["metricsQuery"])
        assert used and not used - app_metrics, sorted(used - app_metrics)


# ---------------------------------------------------------------------------- autoscaling overlay --


def test_autoscaling_overlay_validates_and_adds_the_request_rate() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs, prod = kustomize("overlays/prod-rps"), kustomize("overlays/prod")
    for version in K8S_VERSIONS:
        for doc in docs:
            kv.validate(doc, version or kv.latest_version(), strict=True)
    # everything but the HPA is prod's
    assert [d for d in docs if d["kind"] != "HorizontalPodAutoscaler"] == [
        d for d in prod if d["kind"] != "HorizontalPodAutoscaler"]
    hpa, prod_hpa = one(docs, "HorizontalPodAutoscaler"), one(prod, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == prod_hpa["spec"]["scaleTargetRef"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == prod_hpa["spec"]["minReplicas"]
    assert hpa["spec"]["metrics"][: len(prod_hpa["spec"]["metrics"])] == prod_hpa["spec"]["metrics"], "CPU kept"
    [pods] = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    served = {rule["name"]["as"] for rule in adapter_rules()}
    assert pods["pods"]["metric"]["name"] in served, "the HPA's metric must be one the adapter serves"
    assert pods["pods"]["target"]["type"] == "AverageValue" and float(pods["pods"]["target"]["averageValue"]) > 0


def test_adapter_rule_is_per_pod_on_the_prediction_routes() -> None:
    for rule in adapter_rules():
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                                  "pod": {"resource": "pod"}}  # fmt: skip
        series = rule["seriesQuery"].split("{", 1)[0]
        assert re.fullmatch(rule["name"]["matches"], series)
        for template in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert template in rule["metricsQuery"]
        assert 'route=~"/predict|/predict/batch"' in rule["metricsQuery"]
