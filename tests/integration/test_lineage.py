"""From a served prediction back to its data revision, validation result and code commit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.demo_data import as_requests, make_batch, write_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_prediction_traces_back_to_data_validation_and_code(state):
    from fastapi.testclient import TestClient

    from include.ingestion import commit_validated, validate_landed
    from include.lineage import LineageError, trace_prediction
    from include.serving.app import create_app
    from include.spec import load_spec
    from include.training.lineage import code_sha
    from include.training.train import train_and_register
    from include.versioning import DataRepo

    landing = Path(state.landing) / "sessions"
    write_batch(make_batch(0, 1500), landing / "day0.csv")
    extra = commit_validated([validate_landed(str(landing / "day0.csv"), "sessions")], "sessions")
    spec = load_spec("sessions")
    lineage = DataRepo().lineage("sessions", extra["dvc_rev"])
    model = train_and_register(DataRepo().load("sessions", extra["dvc_rev"], spec), spec,
                               lineage={**lineage, "dag_run_id": "test-run"}, family="logreg",
                               reason="lineage-test", run_key="lineage-test")

    app = create_app(model["model"], model["version"], spec=spec, predictions_dir=state.predictions_dir,
                     log_flush_seconds=0.2)
    row = as_requests(make_batch(5, 1))[0]
    with TestClient(app) as client:
        deadline = time.time() + 120
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
        r = client.post("/predict", json={"instance": row})
        assert r.status_code == 200, r.text
        request_id = r.json()["request_id"]
    # (leaving the client shuts the app down, which flushes the prediction log)

    trace = trace_prediction(request_id)
    assert trace["rows"][0]["session_id"] == row["session_id"]
    [lin] = trace["lineage"]
    assert lin["version"] == str(model["version"])
    assert lin["data"]["data_rev"] == extra["dvc_rev"] and lin["data"]["data_md5"] == extra["md5"]
    assert lin["data"]["validation_id"] == extra["validation_id"]
    assert Path(lin["data"]["validation_report"]).exists()
    assert lin["code"]["code_sha"] == code_sha()
    assert lin["training"]["reason"] == "lineage-test" and lin["training"]["dag_run_id"] == "test-run"

    out = subprocess.run([sys.executable, "-m", "include.lineage", "--request-id", request_id],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["lineage"][0]["data"]["data_rev"] == extra["dvc_rev"]

    with pytest.raises(LineageError, match="not in the prediction log"):
        trace_prediction("no-such-request")
    bad = subprocess.run([sys.executable, "-m", "include.lineage", "--model", model["model"], "--model-version",
                          "999"], capture_output=True, text=True)
    assert bad.returncode == 2 and "not in the registry" in bad.stderr
    # a version number alone is ambiguous with several datasets: say so instead of guessing a model
    which = subprocess.run([sys.executable, "-m", "include.lineage", "--model-version", "1"],
                           capture_output=True, text=True)
    assert which.returncode == 2 and "say which dataset" in which.stderr
