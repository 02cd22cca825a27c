"""The Grafana dashboard (deploy/grafana): provisioned in compose, and every panel's PromQL is valid,
names metrics the code really exports, and returns data on the series those metrics produce.

Grafana does not run here, so the queries are checked with Prometheus' own promtool: each panel's
expression (Grafana's variables substituted) becomes a recording rule for `promtool check rules`,
and `promtool test rules` evaluates `count(<expr>) > bool 0` over synthetic series of every metric
the panels read (named as include/metrics_push.py, the model server and Caddy export them).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "mlops-loop.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "mlops.yml"
# Grafana's own variables and the dashboard's, as a query would see them with "All" selected
SUBSTITUTIONS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$dataset": ".*", "$model": ".*"}
# Caddy's metric names (its Prometheus handler; the edge's internal port) read by the panels
CADDY_METRICS = {"caddy_reverse_proxy_upstreams_healthy", "caddy_http_request_duration_seconds_count"}
PROMETHEUS_OWN = {"ALERTS", "up"}

M = {"model": "sessions_purchase"}
G = {"dataset": "sessions", "model": "sessions_purchase"}
# name{labels} -> promtool series notation; what the stack exports after a few minutes of the loop
SERIES = [
    ("mlops_serving_requests_total", {**M, "version": "3", "endpoint": "/predict", "status": "200"}, "0+90x30"),
    ("mlops_serving_requests_total", {**M, "version": "4", "endpoint": "/predict", "status": "200"}, "0+9x30"),
    ("mlops_serving_requests_total", {**M, "version": "4", "endpoint": "/predict", "status": "500"}, "0+1x30"),
    *[("mlops_serving_request_duration_seconds_bucket", {**M, "version": v, "endpoint": "/predict", "le": le}, "0+10x30")
      for v in ("3", "4") for le in ("0.01", "0.1", "+Inf")],
    ("caddy_reverse_proxy_upstreams_healthy", {"upstream": "mlops-serving-sessions-v3:8000"}, "1x30"),
    ("caddy_http_request_duration_seconds_count", {"server": "edge", "code": "200"}, "0+99x30"),
    ("caddy_http_request_duration_seconds_count", {"server": "edge", "code": "502"}, "0+1x30"),
    ("mlops_drift_share", {**G, "version": "3"}, "0.1x10 0.5x20"),
    ("mlops_drift_feature_drifted", {**G, "feature": "pages_viewed"}, "0x10 1x20"),
    ("mlops_drift_decision", {**G, "code": "drift"}, "0x10 1x20"),
    ("mlops_drift_retrain_timestamp_seconds", G, "0x10 600x20"),
    ("mlops_gate_decision", {**G, "decision": "passed"}, "1x30"),
    ("mlops_gate_version", G, "4x30"),
    ("mlops_deploy_champion_version", G, "3x15 4x15"),
    ("mlops_deploy_rollback_timestamp_seconds", G, "0x20 1200x10"),
    ("mlops_validation_quarantine_timestamp_seconds", G, "0x5 300x25"),
    ("mlops_dag_run_failure_timestamp_seconds", {"dag_id": "ingest"}, "300x30"),
    ("mlops_dag_run_success_timestamp_seconds", {"dag_id": "ingest"}, "60x30"),
    ("ALERTS", {"alertname": "DriftDetected", "alertstate": "firing", **G}, "1x30"),
]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables substituted) of every panel target."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in SUBSTITUTIONS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']}: unknown variable in {target['expr']}"
            out.append((panel["title"], expr))
    return out


def exported_metric_names() -> set[str]:
    """Metric names the project exports: the model server's registry and the Pushgateway pushes."""
    # read from the sources (importing the server costs seconds): Counter("name", ...) and the like
    suffixes = {"Counter": ("",), "Histogram": ("_bucket", "_count", "_sum"), "Gauge": ("",)}
    app = "\n".join(f.read_text() for f in sorted((ROOT / "include" / "serving").glob("*.py")))
    names = {name + suffix for kind, name in re.findall(r'\b(Counter|Histogram|Gauge)\(\s*"([a-z0-9_]+)"', app)
             for suffix in suffixes[kind]}
    assert "mlops_serving_requests_total" in names, "the model server's metrics are no longer found this way"
    pushed = (ROOT / "include" / "metrics_push.py").read_text()
    names |= set(re.findall(r'"(mlops_[a-z0-9_]+)"', pushed))
    return names | CADDY_METRICS | PROMETHEUS_OWN


def test_compose_provisions_the_dashboard_and_its_datasource(dashboard):
    compose = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    dashboards_dir = yaml.safe_load(PROVIDERS.read_text())["providers"][0]["options"]["path"]
    assert (ROOT / mounts[dashboards_dir]).resolve() == DASHBOARD.parent
    source = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"


def test_panels_cover_what_the_issue_asks_for(dashboard):
    text = " ".join(expr for _, expr in queries(dashboard))
    for metric, what in (("mlops_serving_requests_total", "traffic per version"),
                         ("mlops_serving_request_duration_seconds_bucket", "latency per version"),
                         ("group_left", "canary share (a version's share of its model's traffic)"),
                         ("mlops_drift_feature_drifted", "drift per feature"), ("mlops_drift_share", "drift share"),
                         ("mlops_gate_decision", "gate outcomes"), ("mlops_deploy_rollback_timestamp_seconds", "deploys"),
                         ("mlops_dag_run_failure_timestamp_seconds", "DAG failures")):
        assert metric in text, f"no panel shows {what}"


def test_panels_read_only_metrics_the_code_exports(dashboard):
    known = exported_metric_names()
    for title, expr in queries(dashboard):
        for name in re.findall(r"\b((?:mlops|caddy)_[a-z0-9_]+|ALERTS|up)\b(?=\s*[{\[)]|\s*$|\s+[-+*/<>=!o])", expr):
            assert name in known, f"{title}: {name} is exported by nothing in the project"


def test_every_panel_query_parses_and_returns_data(dashboard, promtool, tmp_path):
    exprs = queries(dashboard)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"panel:{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    (tmp_path / "panels.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", "panels.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    def series(name, labels):
        return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"

    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": series(n, lab), "values": v} for n, lab, v in SERIES],
        "promql_expr_test": [{"expr": f"count({expr}) > bool 0", "eval_time": "25m",
                              "exp_samples": [{"labels": "{}", "value": 1}]} for _, expr in exprs],
    }]}
    (tmp_path / "panels.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = subprocess.run([promtool, "test", "rules", "panels.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    if result.returncode != 0:  # name the panels whose query came back empty
        empty = [title for title, expr in exprs if f"count({expr})".replace('"', '\\"') in result.stdout + result.stderr]
        pytest.fail(f"panels without data: {empty or '?'}\n{result.stdout[-3000:]}{result.stderr[-1000:]}")
