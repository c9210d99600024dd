"""What the monitoring tests share: the kit's files, its rules (one source: the PrometheusRule manifest), the
metric names its queries use, and shifted /predict bodies."""

from __future__ import annotations

import copy
import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULE_MANIFEST = MONITORING / "prometheusrule.yaml"
ADAPTER_VALUES = MONITORING / "prometheus-adapter" / "values.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/example-org/retail-prediction/blob/main/docs/operations.md"
# A metric name in PromQL: recording rules (level:metric:operations) carry colons and are not app metrics.
_METRIC = re.compile(r"(?<![\w:])retail_prediction_[A-Za-z0-9_]+(?![\w:])")


def rule_groups(short_for: str | None = None) -> dict[str, Any]:
    """The manifest's `spec` (a Prometheus rules file). `short_for` replaces every alert's `for:` (the real
    Prometheus test cannot wait 30 minutes); promtool's simulated time uses the manifest unchanged."""
    spec = copy.deepcopy(yaml.safe_load(RULE_MANIFEST.read_text())["spec"])
    if short_for is not None:
        for group in spec["groups"]:
            for rule in group["rules"]:
                if "alert" in rule and "for" in rule:
                    rule["for"] = short_for
    return spec


def write_rules(path: Path, short_for: str | None = None) -> Path:
    path.write_text(yaml.safe_dump(rule_groups(short_for), sort_keys=False))
    return path


def rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups()["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def dashboard_module() -> ModuleType:
    """deploy/monitoring/dashboard.py, the dashboard's builder (not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location("retail_prediction_dashboard", MONITORING / "dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target and query variable."""
    found = [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*), \w+\)", variable["query"])
            assert inner, variable["query"]
            found.append((f"variable {variable['name']}", inner.group(1)))
    return found


def fill_variables(expr: str, namespace: str = "retail-prediction", job: str = "retail-api") -> str:
    """A dashboard query with its template variables set, as Grafana sends it."""
    return expr.replace("$namespace", namespace).replace("$job", job)


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]


def adapter_query(rule: dict[str, Any], namespace: str, pods: list[str]) -> str:
    """The PromQL prometheus-adapter sends for `rule`'s metric of these pods (its Go template, filled in)."""
    series = rule["seriesQuery"].split("{", 1)[0]
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", "pod"))


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in OPERATIONS.read_text().splitlines() if line.startswith("#")}


def scaled_prices(body: dict[str, Any], factor: float) -> dict[str, Any]:
    """The same basket with every unit price multiplied by `factor` (a shifted input distribution)."""
    return {"basket_items": [{**item, "price": round(item["price"] * factor, 4)} for item in body["basket_items"]]}
