"""Build the Grafana dashboard of the Retail Prediction API (deploy/monitoring/dashboard.json).

The JSON is generated with Grafana's own typed builders (grafana-foundation-sdk, pinned in the `dev` extra), not
edited by hand: `python deploy/monitoring/dashboard.py` rewrites it, `--check` fails when the committed file
differs (tests/deploy/test_monitoring.py does the same and parses every query). Panels read the recording
rules of prometheusrule.yaml where one exists, so the dashboard and the alerts show the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model

OUT = Path(__file__).with_name("dashboard.json")
UID = "retail-prediction-api"
# Every query is scoped to the chosen namespace and job (the Service's name under a ServiceMonitor).
SEL = 'namespace=~"$namespace", job=~"$job"'
PREDICT_ROUTES = 'route=~"/predict|/predict/batch"'
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Drift: PSI below 0.1 is stable, 0.1-0.25 a moderate shift, above 0.25 a major one (the alerts' threshold).
PSI_STEPS = [model.Threshold(None, "green"), model.Threshold(0.1, "yellow"), model.Threshold(0.25, "red")]
# The /predict latency target (docs/benchmarks.md, issue 3), also the latency alert's threshold.
LATENCY_TARGET_SECONDS = 0.01


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    """A range query on the dashboard's Prometheus data source."""
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DATASOURCE)
    return q.legend_format(legend) if legend else q


def series(title: str, description: str, unit: str, *queries: prometheus.Dataquery,
           width: int = 12, steps: list[model.Threshold] | None = None, stack: bool = False) -> timeseries.Panel:
    """A time series panel; `steps` draws threshold lines (e.g. the PSI bands, the latency target)."""
    panel = (timeseries.Panel().title(title).description(description).unit(unit).span(width).height(8)
             .datasource(DATASOURCE).fill_opacity(10).line_width(1))
    for q in queries:
        panel = panel.with_target(q)
    if steps:
        panel = (panel.thresholds(db.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(steps))
                 .thresholds_style(cb.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)))
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def single(title: str, description: str, unit: str, q: prometheus.Dataquery, width: int = 6,
           text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO) -> stat.Panel:
    """A stat panel with the last value of one query."""
    return (stat.Panel().title(title).description(description).unit(unit).span(width).height(4)
            .datasource(DATASOURCE).with_target(q).text_mode(text_mode))


def variables() -> list[db.DatasourceVariable | db.QueryVariable]:
    namespace = (db.QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
                 .query("label_values(retail_prediction_model_ready, namespace)")
                 .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))
    job = (db.QueryVariable("job").label("Job").datasource(DATASOURCE)
           .query('label_values(retail_prediction_model_ready{namespace=~"$namespace"}, job)')
           .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC))
    return [db.DatasourceVariable("datasource").label("Data source").type("prometheus"), namespace, job]


def build() -> dict[str, Any]:
    """The dashboard as the JSON object Grafana imports."""
    quantiles = [query(f"histogram_quantile({q}, sum by (le, route) ("
                       f"job_route_le:retail_prediction_http_request_duration_seconds_bucket:rate5m"
                       f"{{{SEL}, {PREDICT_ROUTES}}}))", f"p{round(q * 100)} {{{{route}}}}", ref)
                 for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))]
    builder = (
        db.Dashboard("Retail Prediction API").uid(UID).tags(["retail-prediction"]).editable()
        .description("Traffic, latency, errors, predictions, drift and model health of the Retail Prediction "
                     "API. Built by deploy/monitoring/dashboard.py; runbooks in docs/operations.md.")
        .refresh("30s").time("now-6h", "now").timezone("browser").tooltip(model.DashboardCursorSync.CROSSHAIR)
        .variables(variables())
        .with_row(db.Row("Traffic"))
        .with_panel(series(
            "Requests per second", "All routes, by route and status (5 minute rate).", "reqps",
            query(f"sum by (route, status) (job_route_status:retail_prediction_http_requests:rate5m{{{SEL}}})",
                  "{{route}} {{status}}"), width=12, stack=True))
        .with_panel(series(
            "Error ratio (5xx) of the prediction routes",
            "5xx over all requests of /predict and /predict/batch over 5 minutes; the alert fires above 1%.",
            "percentunit",
            query(f"sum by (namespace, job) (job:retail_prediction_predict_error_ratio:ratio_rate5m{{{SEL}}})",
                  "{{job}} 5xx ratio"),
            steps=[model.Threshold(None, "green"), model.Threshold(0.01, "red")]))
        .with_panel(series(
            "Latency percentiles of the prediction routes",
            "p50 / p90 / p99 from the request duration histogram (5 minute rate). The dashed line is the 10 ms "
            "p99 target of /predict.", "s", *quantiles, width=12,
            steps=[model.Threshold(None, "green"), model.Threshold(LATENCY_TARGET_SECONDS, "red")]))
        .with_panel(series(
            "Predictions by class", "Baskets classified per second, by predicted price sensitivity.", "ops",
            query(f"sum by (label) (job_label:retail_prediction_predictions:rate5m{{{SEL}}})", "{{label}}"),
            stack=True))
        .with_row(db.Row("Drift"))
        .with_panel(series(
            "Input drift (PSI) per feature",
            "Population stability index of each input feature over each pod's recent baskets against the "
            "model's training profile (pods with 200 baskets or more): < 0.1 stable, 0.1-0.25 moderate, "
            "> 0.25 major (alert after 30 min).",
            "none", query(f"avg by (feature) (job_feature:retail_prediction_input_drift_psi:avg{{{SEL}}})",
                          "{{feature}}"),
            width=12, steps=PSI_STEPS))
        .with_panel(series(
            "Prediction drift (PSI)",
            "Population stability index of the predicted classes against the training profile.", "none",
            query(f"avg(job:retail_prediction_prediction_drift_psi:avg{{{SEL}}})", "predicted class"),
            query(f"min(retail_prediction_drift_window_baskets{{{SEL}}})", "baskets in the window (min)", "B"),
            width=12, steps=PSI_STEPS))
        .with_row(db.Row("Model and source"))
        .with_panel(single(
            "Model version", "Pods serving each model version.", "none",
            query(f"count by (version) (retail_prediction_model_info{{{SEL}}})", "{{version}}"),
            text_mode=common.BigValueTextMode.VALUE_AND_NAME))
        .with_panel(single(
            "Pods with a ready model", "Pods whose model is loaded, verified and warmed up.", "none",
            query(f"sum(retail_prediction_model_ready{{{SEL}}})", "ready")))
        .with_panel(single(
            "Model age", "Time since the oldest pod loaded its model.", "s",
            query(f"time() - min(retail_prediction_model_loaded_timestamp_seconds{{{SEL}}})", "age")))
        .with_panel(single(
            "Since the source last answered", "Time since the model source (S3) last answered a check.", "s",
            query(f"time() - max(retail_prediction_source_last_success_timestamp_seconds{{{SEL}}})", "since")))
        .with_panel(series(
            "Model loads and refusals", "Loads by kind and result, and archives refused, per 5 minutes.", "short",
            query(f"sum by (kind, result) (increase(retail_prediction_model_loads_total{{{SEL}}}[5m]))",
                  "{{kind}} {{result}}"),
            query(f"sum by (reason) (increase(retail_prediction_model_refusals_total{{{SEL}}}[5m]))",
                  "refused: {{reason}}", "B"), width=8))
        .with_panel(series(
            "Source check failures", "Failed checks of the model source, by reason, per 5 minutes.", "short",
            query(f"sum by (reason) (increase(retail_prediction_source_check_failures_total{{{SEL}}}[5m]))",
                  "{{reason}}"), width=8))
        .with_panel(series(
            "Payload log records", "Prediction payload log records per second by outcome: dropped or failed "
            "records are lost for later analysis.", "ops",
            query(f"sum by (outcome) (rate(retail_prediction_payload_log_records_total{{{SEL}}}[5m]))",
                  "{{outcome}}"), width=8))
    )
    board = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(board["panels"], 1):  # stable ids: links to a panel survive a rebuild
        panel["id"] = number
    return board


def render() -> str:
    """The committed file's exact text."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if dashboard.json is not what this builds")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).relative_to(Path.cwd())}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
