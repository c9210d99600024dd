"""The monitoring kit against a real Prometheus (Debian's) scraping real API processes over real sockets.

Two `python -m retail_prediction.serve` processes on free ports: `retail-api` serves the synthetic model with a
200-basket drift window, `retail-api-broken` points at a file that is not a model (never ready, /predict 503).
Prometheus scrapes both every second with the namespace/pod labels a ServiceMonitor would add, and evaluates
the PrometheusRule's own groups every second, with every alert's `for:` cut to 2 s (the only change, made by
monitoring_kit.rule_groups; promtool checks the real durations). Then, through Prometheus's HTTP API:

* the broken service (its model file is not an archive) fires the error-ratio, no-ready-model and
  model-load-failure alerts, then the source-check alert once the file is gone; the healthy one, sent client
  errors (4xx) among its traffic, has an error ratio of 0 and no error alert;
* normal baskets (a later generated week) keep the input drift below 0.25 and no drift alert; the same
  baskets with prices x10 raise spend's PSI above 0.25 and the input drift alert fires;
* the prometheus-adapter rule's query returns the pod's request rate; every dashboard query runs.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api.conftest import ApiProcess, free_port, wait_until
from retail_prediction.api.schemas import EXAMPLE_REQUEST
from retail_prediction.data.requests import sample_baskets

from .monitoring_kit import (
    adapter_query,
    adapter_rules,
    dashboard_module,
    dashboard_queries,
    fill_variables,
    scaled_prices,
    write_rules,
)
from .test_deploy import NAMESPACE, need_tool

HEALTHY, BROKEN = "retail-api", "retail-api-broken"
DRIFT_WINDOW = 200
SHORT_FOR = "2s"


class Prometheus:
    """`prometheus` on 127.0.0.1:<free port> with a temporary TSDB; queries through its HTTP API."""

    def __init__(self, binary: str, config: Path, workdir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "prometheus.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=10)
        wait_until(self._ready, 60, f"{self.url}/-/ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
        try:
            return self.http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def api(self, path: str, **params: str) -> Any:
        body = self.http.get(f"/api/v1/{path}", params=params).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The single sample of `expr`, or None when it has none."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.http.close()


@dataclass
class Stack:
    prometheus: Prometheus
    healthy: ApiProcess
    broken: ApiProcess
    broken_model: Path


def _api_env(tmp: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "AWS_", "DRIFT_"))}
    env.update({"MODEL_DIR": str(tmp), "MODEL_POLL_SECONDS": "0", "LOG_LEVEL": "warning"})
    env.update({k.upper(): v for k, v in settings.items()})
    return env


@pytest.fixture(scope="module")
def stack(trained_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = need_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus-stack")
    healthy = ApiProcess(_api_env(tmp / "healthy", model_uri=str(trained_model),
                                  drift_window_baskets=str(DRIFT_WINDOW)), tmp / "healthy.log")  # fmt: skip
    (tmp / "broken.tar.gz").write_bytes(b"not a model archive")
    broken = ApiProcess(_api_env(tmp / "broken", model_uri=str(tmp / "broken.tar.gz"),
                                 model_retry_initial_seconds="0.2", model_retry_max_seconds="1"),
                        tmp / "broken.log")  # fmt: skip
    prometheus = None
    try:
        healthy.wait_ready(60)
        write_rules(tmp / "rules.yaml", short_for=SHORT_FOR)
        # The labels a ServiceMonitor gives each pod's series: job (the Service), namespace, pod.
        jobs = [{"job_name": job, "static_configs": [{"targets": [api.url.removeprefix("http://")],
                                                      "labels": {"namespace": NAMESPACE, "pod": f"{job}-0"}}]}
                for job, api in ((HEALTHY, healthy), (BROKEN, broken))]
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(tmp / "rules.yaml")], "scrape_configs": jobs}
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prometheus = Prometheus(binary, tmp / "prometheus.yml", tmp)
        wait_until(lambda: len(prometheus.query("up == 1")) == 2, 60, "both APIs scraped")
        yield Stack(prometheus, healthy, broken, tmp / "broken.tar.gz")
    finally:
        if prometheus is not None:
            prometheus.stop()
        healthy.kill()
        broken.kill()


def _while_sending(send: Callable[[], None], check: Callable[[], bool], timeout: float, what: str) -> None:
    """Keep sending traffic until `check()` holds (Prometheus sees it a scrape and an evaluation later)."""

    def step() -> bool:
        send()
        return check()

    wait_until(step, timeout, what)


def test_broken_service_fires_error_ready_load_and_source_alerts(stack: Stack) -> None:
    prom = stack.prometheus

    def send() -> None:
        assert stack.broken.http.post("/predict", json=EXAMPLE_REQUEST).status_code == 503

    def firing(alert: str, **labels: str) -> Callable[[], bool]:
        return lambda: any(a["state"] == "firing" for a in prom.alerts(alert, job=BROKEN, **labels))

    # Its model file is not an archive: every initial load is refused, /predict answers 503.
    for alert in ("RetailPredictionHighErrorRatio", "RetailPredictionNoReadyModel",
                  "RetailPredictionModelLoadFailures"):
        _while_sending(send, firing(alert), 60, f"{alert} firing for {BROKEN}")
    [loads] = prom.alerts("RetailPredictionModelLoadFailures", job=BROKEN)
    assert loads["labels"]["kind"] == "initial" and loads["labels"]["severity"] == "warning"
    [errors] = prom.alerts("RetailPredictionHighErrorRatio", job=BROKEN)
    assert errors["labels"]["severity"] == "critical" and float(errors["value"]) == 1.0
    assert errors["annotations"]["runbook_url"].endswith("#retailpredictionhigherrorratio")
    assert not prom.alerts("RetailPredictionSourceCheckFailures", job=BROKEN), "the source itself answers"
    # Then the file goes away: the source checks fail (not_found).
    stack.broken_model.unlink()
    wait_until(firing("RetailPredictionSourceCheckFailures", reason="not_found"), 60,
               "RetailPredictionSourceCheckFailures firing for the missing file")
    # the healthy service serves: none of these alerts is about it, and it is up
    for alert in ("RetailPredictionHighErrorRatio", "RetailPredictionNoReadyModel",
                  "RetailPredictionModelLoadFailures", "RetailPredictionSourceCheckFailures", "RetailPredictionDown"):
        assert not prom.alerts(alert, job=HEALTHY), alert


def test_normal_then_shifted_traffic_raises_input_drift(stack: Stack, weeks: Any) -> None:
    prom, api = stack.prometheus, stack.healthy
    baskets = sample_baskets(weeks.folder, 2 * DRIFT_WINDOW, seed=5)
    spend = f'retail_prediction_input_drift_psi{{job="{HEALTHY}",feature="spend"}}'
    window = f'retail_prediction_drift_window_baskets{{job="{HEALTHY}"}}'

    # Normal traffic, with client errors among it: a full window, spend stable, no error ratio.
    for i, body in enumerate(baskets):
        assert api.http.post("/predict", json=body).status_code == 200
        if i % 20 == 0:
            assert api.http.post("/predict", json={"basket_items": []}).status_code == 422
    wait_until(lambda: prom.value(window) == DRIFT_WINDOW, 60, "a full drift window in Prometheus")
    normal = {r["metric"]["feature"]: float(r["value"][1])
              for r in prom.query(f'retail_prediction_input_drift_psi{{job="{HEALTHY}"}}')}
    assert set(normal) == {"lines", "spend", "mean_unit_price", "unknown_share"}
    assert max(normal.values()) < 0.25, f"normal traffic reads as drift: {normal}"
    # The ratio needs the request counter to rise between two scrapes (traffic over 0 s reads 0/0): keep
    # normal traffic and client errors flowing until Prometheus has a number.
    ratio = f'job:retail_prediction_predict_error_ratio:ratio_rate5m{{job="{HEALTHY}"}}'
    more = iter(baskets * 20)

    def send() -> None:
        assert api.http.post("/predict", json=next(more)).status_code == 200
        assert api.http.post("/predict", json={"basket_items": []}).status_code == 422

    def recorded() -> bool:
        value = prom.value(ratio)
        return value is not None and not math.isnan(value)

    _while_sending(send, recorded, 60, "an error ratio recorded for the healthy service")
    assert prom.value(ratio) == 0.0, "4xx are the client's errors, not the service's"
    assert not prom.alerts("RetailPredictionInputDrift", job=HEALTHY)

    # The same kind of baskets, prices x10: a window of them moves spend far from the training profile.
    for body in baskets[:DRIFT_WINDOW]:
        assert api.http.post("/predict", json=scaled_prices(body, 10)).status_code == 200
    wait_until(lambda: (prom.value(spend) or 0) > 0.25, 60, "spend PSI above 0.25 in Prometheus")
    shifted = prom.value(spend)
    assert shifted is not None and shifted > normal["spend"]
    wait_until(lambda: any(a["state"] == "firing" for a in prom.alerts("RetailPredictionInputDrift",
                                                                          job=HEALTHY, feature="spend")),
               60, "RetailPredictionInputDrift firing for spend")  # fmt: skip
    [alert] = prom.alerts("RetailPredictionInputDrift", job=HEALTHY, feature="spend")
    assert alert["labels"]["severity"] == "warning" and float(alert["value"]) > 0.25
    print(f"spend PSI: normal {normal['spend']:.3f}, shifted {shifted:.3f}; normal window {normal}")


def test_adapter_query_reads_the_pod_request_rate(stack: Stack) -> None:
    prom, api = stack.prometheus, stack.healthy
    [rule] = adapter_rules()
    series = prom.api("series", **{"match[]": rule["seriesQuery"]})
    assert {s["pod"] for s in series} >= {f"{HEALTHY}-0", f"{BROKEN}-0"}
    query = adapter_query(rule, NAMESPACE, [f"{HEALTHY}-0"])

    def send() -> None:
        api.http.post("/predict", json=EXAMPLE_REQUEST)
        api.http.get("/health")  # not a prediction route: not counted

    _while_sending(send, lambda: (prom.value(query) or 0) > 0, 60, "a request rate for the pod")
    [sample] = prom.query(query)
    assert sample["metric"] == {"pod": f"{HEALTHY}-0"}


def test_every_dashboard_query_runs(stack: Stack) -> None:
    """Each panel's query is valid for Prometheus, and the panels of a serving API show data."""
    prom = stack.prometheus
    board = dashboard_module().build()
    empty = []
    for title, expr in dashboard_queries(board):
        if not prom.query(fill_variables(expr, NAMESPACE, HEALTHY)):
            empty.append(title)
    # A local model file has no source to check and nothing was refused, failed or logged: those may be empty.
    may_be_empty = {"Model loads and refusals", "Source check failures", "Payload log records",
                    "Since the source last answered"}
    assert not set(empty) - may_be_empty, f"panels without data: {sorted(set(empty) - may_be_empty)}"
