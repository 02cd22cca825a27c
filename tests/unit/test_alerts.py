"""The alert rules (deploy/alerts.yml) and the Prometheus config, checked by Prometheus' own promtool.

`promtool check` validates the syntax and the PromQL; `promtool test rules` runs deploy/alerts.test.yml,
where each alert fires on synthetic series at the expected time with the expected labels and text.
promtool comes from Debian's package (tools/debian_tools.sh; CI installs it, so there a missing
promtool fails instead of skipping).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
# what issue 15 asks to be alerted on; each name must exist and be unit-tested
REQUIRED = {"ModelServerDown", "ServingErrorRate", "ModelServerErrorRate", "ServingLatencyP99High", "DriftDetected",
            "RetrainStorm", "RetrainCooldownHit", "DagRunFailed", "ValidationQuarantine"}


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120)


def alert_names() -> set[str]:
    return {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}


def test_rules_and_config_pass_promtool_check(promtool):
    result = run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(promtool, "check", "config", "--syntax-only", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "alerts.yml" in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["rule_files"]


def test_every_alert_is_required_or_extra_and_each_one_fires_in_a_unit_test():
    names = alert_names()
    assert REQUIRED <= names, f"missing alerts: {sorted(REQUIRED - names)}"
    fired = {case["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert names <= fired, f"alerts without a firing unit test in {RULE_TESTS.name}: {sorted(names - fired)}"


def test_promtool_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_catch_a_broken_rule(promtool, tmp_path):
    """The unit tests are not vacuous: raising one threshold makes promtool test fail on that alert."""
    rules = RULES.read_text()
    broken = rules.replace("sum by (model, version) (rate(mlops_serving_requests_total{endpoint!~\"/health|/ready|"
                           "/metrics\"}[5m])) > 0.05", "sum by (model, version) (rate(mlops_serving_requests_total"
                           "{endpoint!~\"/health|/ready|/metrics\"}[5m])) > 0.5")
    assert broken != rules
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts.test.yml").write_text(RULE_TESTS.read_text())
    result = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "ModelServerErrorRate" in result.stdout + result.stderr
