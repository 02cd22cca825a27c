"""kill -9 a batch scoring run at each of its crash points, then run it again: the output is
complete once, with no duplicate rows, no partial or temp files and one MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from include.demo_data import make_batch, write_batch
from tests.chaos._crash import run_until_crash

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHILD = "import json, sys; from include.batch import job; job.run(json.loads(sys.argv[1]), sys.argv[2])"


def _finished_runs(batch_id: str) -> list:
    from include.batch.job import EXPERIMENT
    from include.tracking import client, configure_mlflow

    exp = configure_mlflow(EXPERIMENT)
    return client().search_runs([exp], filter_string=f"tags.batch_run_id = '{batch_id}'")


def test_batch_run_killed_at_each_crash_point_completes_once_on_rerun(state, tmp_path):
    from include.batch import job
    from include.spec import load_spec
    from include.tracking import client, configure_mlflow
    from include.training.train import train_and_register

    spec = load_spec("sessions")
    model = train_and_register(make_batch(0, 1500), spec, family="logreg", seed=1, reason="test", run_key="batch-crash",
                               lineage={"dataset": "sessions", "data_rev": "unknown", "data_md5": "unknown",
                                        "validation_id": "unknown", "dag_run_id": "test"})
    configure_mlflow()
    client().set_registered_model_alias(model["model"], "champion", model["version"])
    src = tmp_path / "in"
    src.mkdir()
    make_batch(1, 3000).to_parquet(src / "a.parquet", row_group_size=1000)  # 3 partitions, 2 chunks each
    bad = make_batch(2, 600)
    bad.loc[bad.index[:7], "device"] = "tv"
    write_batch(bad, src / "b.csv")
    params = {"dataset": "sessions", "source": str(src / "*"), "partition_rows": 1000, "chunk_rows": 500}
    total, rejected = 3000 + 600, 7

    for point in ("batch.after_chunk@3", "batch.before_commit@2", "batch.after_commit@1", "batch.before_manifest"):
        run_id = f"manual__crash-{point.replace('@', '-')}"
        run_until_crash(CHILD, point, json.dumps(params), run_id)
        out = Path(job.default_output()) / "sessions" / job.batch_run_id(run_id)
        assert not (out / "_manifest.json").exists()
        committed = {p.name: p.stat().st_mtime_ns for p in (out / "scores").glob("part-*.parquet")}
        for p in committed:  # whatever is under its final name is whole
            pd.read_parquet(out / "scores" / p)

        manifest = job.run(params, run_id)  # the rerun, in this process

        assert manifest["rows_in"] == total and manifest["scored"] == total - rejected, (point, manifest)
        assert manifest["rejected"] == rejected and manifest["partitions"] == 4
        assert not list(out.rglob(".tmp-*")), point
        scores = pd.read_parquet(out / "scores")
        assert len(scores) == total - rejected and not scores.duplicated(["source", "row"]).any(), point
        assert len(pd.read_parquet(out / "rejects")) == rejected
        # partitions committed before the kill were not scored again
        assert all((out / "scores" / p).stat().st_mtime_ns == t for p, t in committed.items()), point
        runs = _finished_runs(job.batch_run_id(run_id))
        assert len(runs) == 1 and runs[0].info.status == "FINISHED" and \
            runs[0].info.run_id == manifest["mlflow_run_id"], point
        assert job.run(params, run_id) == manifest  # and once more: nothing changes
