"""Infra validation's verdict (include/infra_validation.py) and what its container may be shown.

The end-to-end runs (the DockerOperator on a real engine, the local process, a broken artifact)
are in tests/integration/test_deploy.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

from include.config import PROJECT_ROOT, settings
from include.infra_validation import EXIT_BROKEN, SCORE_TOLERANCE, compare


def test_compare_names_what_differs():
    assert compare([0.1, 0.2], [0.1, 0.2 + SCORE_TOLERANCE / 2]) is None
    assert "max abs diff 0.01" in compare([0.1, 0.2], [0.1, 0.21])
    assert "1 scores, expected 2" in compare([0.1], [0.1, 0.2])
    assert "non-finite" in compare([float("nan"), 0.2], [0.1, 0.2])


def test_credentials_go_only_to_the_private_environment(monkeypatch, tmp_path):
    from include.deployment import validation_env

    uri = f"postgresql://mlflow:pw-in-uri@db/{tmp_path.name}"
    for k, v in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "AWS_ACCESS_KEY_ID": "AKIAUNIT",
                 "AWS_SECRET_ACCESS_KEY": "s3cret", "MLFLOW_S3_ENDPOINT_URL": "http://s3:9000",
                 "MLFLOW_TRACKING_TOKEN": "tok-unit-h12"}.items():
        monkeypatch.setenv(k, v)
    public, private = validation_env(settings())
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
            "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_TOKEN"} <= set(private)
    shown = json.dumps(public)
    assert not [v for v in ("pw-in-uri", "AKIAUNIT", "s3cret", "tok-unit-h12") if v in shown], public


def test_model_servers_get_the_same_store_credentials_as_validation(monkeypatch, tmp_path):
    """A model server loads its version from MLflow (and S3) at start and on reload: an MLflow that
    requires a token or a password must get them, as the validation run does."""
    from include.deployment import serving_env, validation_env

    for k, v in {"MLFLOW_TRACKING_USERNAME": "svc", "MLFLOW_TRACKING_PASSWORD": "pw-unit",
                 "MLFLOW_TRACKING_TOKEN": "tok-unit", "AWS_ACCESS_KEY_ID": "AKIAUNIT",
                 "MLFLOW_S3_ENDPOINT_URL": "http://s3:9000", "MLFLOW_TRACKING_URI": "http://elsewhere:5000",
                 "MLOPS_SERVING_PORT": "9999"}.items():
        monkeypatch.setenv(k, v)
    s = settings()
    env = serving_env("m", "3", "d", s)
    _, private = validation_env(s)
    credentials = {k for k in private if k.startswith(("AWS_", "MLFLOW_S3_", "MLFLOW_TRACKING_"))
                   and k not in ("MLFLOW_TRACKING_URI",)}
    assert credentials and credentials <= set(env), sorted(credentials - set(env))
    assert env["MLFLOW_TRACKING_PASSWORD"] == "pw-unit"
    # the URIs are the deployer's settings, and the server's own port is chosen per server
    assert env["MLFLOW_TRACKING_URI"] == s.mlflow_tracking_uri and "MLOPS_SERVING_PORT" not in env


def test_a_model_that_cannot_load_exits_1_with_the_cause_in_the_results(state, tmp_path):
    """The process's own verdict: a version the registry does not have is a broken artifact."""
    import pandas as pd

    golden, expected, results = tmp_path / "golden.parquet", tmp_path / "expected.json", tmp_path / "out.json"
    pd.DataFrame({"x": [1.0]}).to_parquet(golden)
    expected.write_text(json.dumps({"scores": [0.5]}))
    proc = subprocess.run(
        [sys.executable, "-m", "include.infra_validation", "--model", "no_such_model", "--version", "1",
         "--dataset", "sessions", "--golden", str(golden), "--expected", str(expected), "--results", str(results)],
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300,
    )
    assert proc.returncode == EXIT_BROKEN, proc.stdout + proc.stderr
    verdict = json.loads(results.read_text())
    assert not verdict["passed"] and verdict["error"].startswith("could not load or score the model"), verdict
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["results"] == str(results) and "scores" not in summary
