"""batch_score on real Airflow (dag.test), MLflow and DVC: offline scores equal the online server's
and predict_scores'; every kind of row /predict rejects lands in rejects with the online message."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.demo_data import as_requests, make_batch, write_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# (field, CSV cell, what an online client sends for it): one row per kind of bad value
BAD = [
    ("device", "tv", "tv"),
    ("pages_viewed", "3.5", 3.5),
    ("pages_viewed", "0", 0),
    ("session_seconds", "abc", "abc"),
    ("discount_pct", "95", 95),
    ("country", "", None),
    ("session_id", "x" * 1001, "x" * 1001),
    ("ts", "not-a-date", "not-a-date"),
]


def _champion(state, family: str = "logreg") -> dict:
    from include.ingestion import commit_validated, validate_landed
    from include.spec import load_spec
    from include.tracking import client, configure_mlflow
    from include.training.train import train_and_register
    from include.versioning import DataRepo

    landing = Path(state.landing) / "sessions"
    write_batch(make_batch(0, 1500), landing / "day0.csv")
    extra = commit_validated([validate_landed(str(landing / "day0.csv"), "sessions")], "sessions")
    spec = load_spec("sessions")
    lineage = DataRepo().lineage("sessions", extra["dvc_rev"])
    model = train_and_register(DataRepo().load("sessions", extra["dvc_rev"], spec), spec,
                               lineage={**lineage, "dag_run_id": "test"}, family=family, reason="batch-test",
                               run_key="batch-test")
    configure_mlflow()
    client().set_registered_model_alias(model["model"], "champion", model["version"])
    return model


def _write_bad_csv(path: Path, good: pd.DataFrame) -> list[dict]:
    """The good rows, then one row per BAD case, then a line with too few cells; returns the cases."""
    frame = good.copy()
    frame["ts"] = frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows = frame.astype(object).where(frame.notna(), "").to_dict(orient="records")
    cases = []
    for i, (field, cell, sent) in enumerate(BAD):
        base = dict(rows[i])
        base["session_id"] = f"bad-{i}"
        base[field] = cell
        rows.append(base)
        cases.append({"key": base["session_id"] if field != "session_id" else cell, "field": field, "sent": sent,
                      "row": len(rows) - 1})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(frame.columns))
        w.writeheader()
        w.writerows(rows)
        fh.write("short-row,2026-01-01T00:00:00Z,mobile\n")
    return cases


def _online(model: dict, spec, rows: list[dict], predictions_dir) -> tuple[list[float], list]:
    from fastapi.testclient import TestClient

    from include.serving.app import create_app

    app = create_app(model["model"], model["version"], spec=spec, predictions_dir=predictions_dir,
                     log_flush_seconds=0.2)
    with TestClient(app) as client:
        deadline = time.time() + 120
        while client.get("/ready").status_code != 200 and time.time() < deadline:
            time.sleep(0.2)
        scores = []
        for i in range(0, len(rows), 1000):
            r = client.post("/predict", json={"instances": rows[i:i + 1000]})
            assert r.status_code == 200, r.text
            scores += r.json()["predictions"]
        errors = [client.post("/predict", json={"instance": row}).json() for row in BAD_ROWS(rows)]
    return scores, errors


def BAD_ROWS(good_rows: list[dict]) -> list[dict]:  # the online twin of each BAD case
    out = []
    for i, (field, _cell, sent) in enumerate(BAD):
        row = {**good_rows[i], "session_id": f"bad-{i}", field: sent}
        out.append(row)
    return out


def test_batch_score_dag_scores_like_the_server_and_rejects_like_it(airflow_db, state, tmp_path):
    from include.spec import load_spec
    from include.training.metrics import predict_scores
    from include.training.model_io import load_model
    from tests.dagrun import run_dag

    model = _champion(state)
    spec = load_spec("sessions")
    src = tmp_path / "in"
    src.mkdir()
    good = make_batch(7, 3000)
    good.to_parquet(src / "good.parquet", row_group_size=1000)  # three row groups: three partitions
    bad_csv_good = make_batch(8, 200)
    cases = _write_bad_csv(src / "mixed.csv", bad_csv_good)
    extra = make_batch(9, 5).assign(coupon="X")  # a column /predict does not know: every row rejected
    write_batch(extra, src / "extra.csv")

    dr = run_dag("batch_score", {"dataset": "sessions", "source": str(src / "*"), "partition_rows": 1000,
                                 "chunk_rows": 400})
    states = {(ti.task_id, ti.map_index): str(ti.state) for ti in dr.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    assert sum(1 for t, _ in states if t == "score") == 5  # 3 row-group ranges + 2 CSV files

    from include.batch import job

    # the state dir is the test session's: other tests' batch runs live next to this one
    run_dir = Path(state.state_dir) / "batch" / "sessions" / job.batch_run_id(dr.run_id)
    manifest = json.loads((run_dir / "_manifest.json").read_text())
    n_bad = len(BAD) + 1 + len(extra)
    assert manifest["rows_in"] == len(good) + len(bad_csv_good) + len(BAD) + 1 + len(extra)
    assert manifest["rejected"] == n_bad and manifest["scored"] == len(good) + len(bad_csv_good)
    assert manifest["version"] == str(model["version"]) and manifest["version_chosen_by"] == "alias champion"
    assert sum(manifest["score"]["hist"]) == manifest["scored"]
    assert not [p for p in run_dir.rglob(".tmp-*")]

    scores = pd.read_parquet(run_dir / "scores")
    assert len(scores) == manifest["scored"] and not scores.duplicated(["source", "row"]).any()
    assert set(scores["model_version"]) == {str(model["version"])} and set(scores["run_id"]) == {dr.run_id}

    # offline: predict_scores on the same rows, bit for bit
    pipeline = load_model(model["model"], model["version"])
    got = scores[scores.source.str.endswith("good.parquet")].sort_values("row")
    np.testing.assert_array_equal(got["score"].to_numpy(), predict_scores(pipeline, good, spec))
    assert (got["label"].to_numpy() == (got["score"].to_numpy() >= 0.5).astype(int)).all()

    # online: the model server's /predict on the same rows; and its 422 message for each bad row
    online, errors = _online(model, spec, as_requests(good), state.predictions_dir)
    np.testing.assert_allclose(got["score"].to_numpy(), online, rtol=0, atol=1e-12)

    rejects = pd.read_parquet(run_dir / "rejects")
    assert len(rejects) == n_bad
    for case, err in zip(cases, errors, strict=True):
        [rej] = rejects[(rejects.source.str.endswith("mixed.csv")) & (rejects.row == case["row"])].to_dict("records")
        assert rej["field"] == case["field"], rej
        # online the row sits in {"instance": row}: the same message, under the body's `instance.` path
        assert err["error"]["status"] == 422, err
        assert rej["reason"] == err["error"]["message"].replace("instance.", ""), (rej, err)
    assert (rejects[rejects.source.str.endswith("extra.csv")]["type"] == "extra_forbidden").all()
    assert (rejects["type"] == "malformed_csv").sum() == 1

    # one MLflow run linked to the version; lineage by run id and by row key
    from include.lineage import trace_batch

    trace = trace_batch(dr.run_id, key=good["session_id"].iloc[5])
    assert trace["mlflow_run_id"] == manifest["mlflow_run_id"]
    assert trace["lineage"]["version"] == str(model["version"])
    assert trace["rows"]["scores"][0]["score"] == got["score"].iloc[5]
    cli = subprocess.run([sys.executable, "-m", "include.lineage", "--batch-run", dr.run_id, "--key", "bad-0"],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["rows"]["rejects"][0]["field"] == "device"

    # the same DAG run again: nothing scored twice, the manifest stands
    from include.batch import job

    parts = job.plan({"dataset": "sessions", "source": "ignored: the plan is recorded"}, dr.run_id)
    assert len(parts) == 5 and job.finalize(parts) == manifest


# hgb: the score task builds the vectorised scorer from the skops file (no sklearn); logreg: skops loads it
@pytest.mark.parametrize("family", ["logreg", "hgb"])
def test_data_repo_revision_scores_the_rows_the_revision_holds(state, family, caplog):
    """source=latest: the rows DataRepo.load gives (a later batch's row replaces the earlier one)."""
    from include.batch import job
    from include.ingestion import commit_validated, validate_landed
    from include.spec import load_spec
    from include.training.metrics import predict_scores
    from include.training.model_io import load_model
    from include.versioning import DataRepo

    model = _champion(state, family)
    spec = load_spec("sessions")
    fix = make_batch(0, 1500).iloc[:100].assign(cart_items=3)  # corrections of 100 day-0 rows
    landing = Path(state.landing) / "sessions"
    write_batch(pd.concat([fix, make_batch(1, 400)]), landing / "day1.csv")
    extra = commit_validated([validate_landed(str(landing / "day1.csv"), "sessions")], "sessions")

    with caplog.at_level(logging.INFO, logger="include.batch.scoring"):
        manifest = job.run({"dataset": "sessions", "source": "latest", "model_version": str(model["version"])},
                           f"manual__rev-test-{family}")
    fast = "scoring with the vectorised fast path" in caplog.text
    assert fast == (family == "hgb"), caplog.text[-2000:]
    skops_file = Path(manifest["output"]) / "_model" / "model.skops"
    assert manifest["model_md5"] == hashlib.md5(skops_file.read_bytes()).hexdigest()
    assert manifest["data_rev"] == extra["dvc_rev"] and manifest["version_chosen_by"] == "version"
    assert manifest["rows_in"] == 1500 + 500 and manifest["superseded"] == 100 and manifest["rejected"] == 0
    scores = pd.read_parquet(Path(manifest["output"]) / "scores").set_index("session_id")
    expected = DataRepo().load("sessions", "latest", spec)
    assert len(scores) == len(expected)
    want = pd.Series(predict_scores(load_model(model["model"], model["version"]), expected, spec),
                     index=expected["session_id"])
    np.testing.assert_array_equal(scores.loc[want.index, "score"].to_numpy(), want.to_numpy())
    assert set(scores["data_rev"]) == {extra["dvc_rev"]}
