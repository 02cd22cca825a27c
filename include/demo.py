"""`make demo`: run the loop on the embedded stack (Airflow + MLflow on SQLite, DVC with a local
remote, all under ``state/``) and print what each stage did.

Each stage is a real DAG run (``dag.test()``: the tasks run in this process against the real
metadata DB). The demo lands two good daily batches and one broken batch, ingests them, trains on
the newest revision and gates the result. Re-running it is safe: already-ingested batches are
no-ops, so the second demo trains again on the same revision and the gate decides again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from include.config import airflow_env, settings


def _prepare_env() -> None:
    os.environ.update(airflow_env())
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


def _step(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def _migrate() -> None:
    s = settings()
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True)


def land_demo_batches(days: range = range(2), n_rows: int = 4000, *, with_bad: bool = True) -> list[Path]:
    """Write the demo's daily batches (and one broken one) into the landing zone."""
    from include.demo_data import make_batch, write_batch

    landing = Path(settings().landing)
    paths = []
    for day in days:
        paths.append(write_batch(make_batch(day, n_rows), landing / f"sessions-day{day:03d}.csv"))
    if with_bad:
        bad = make_batch(99, 500)
        bad.loc[:40, "pages_viewed"] = -5  # out of range: the GX gate must stop it
        bad.loc[:5, "device"] = "toaster"
        paths.append(write_batch(bad, landing / "sessions-broken.csv"))
    return paths


def _dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    from include.config import PROJECT_ROOT

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag.get_dag(dag_id)


def _run(dag_id: str, conf: dict | None = None):
    t = time.perf_counter()
    dr = _dag(dag_id).test(run_conf=conf or {})
    states = {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
              for ti in dr.get_task_instances()}
    print(f"{dag_id}: run {dr.run_id} -> {dr.state} in {time.perf_counter() - t:.1f}s; tasks: {states}")
    return dr


def main() -> int:
    _prepare_env()
    s = settings()
    print(f"state dir: {s.state_dir}\nMLflow: {s.mlflow_tracking_uri}\nDVC remote: {s.dvc_remote}")
    _step("initialising the embedded Airflow metadata DB")
    _migrate()

    _step("landing demo batches")
    for p in land_demo_batches():
        print(f"landed {p}")

    _step("ingest: validate (GX) -> quarantine bad batches -> dvc add/commit/push good ones")
    _run("ingest")
    from include.versioning import DataRepo

    repo = DataRepo(s)
    lineage = repo.lineage("sessions", "latest")
    print(f"dataset sessions @ {lineage['data_rev'][:10]} md5 {lineage['data_md5']} rows {lineage['rows']}")
    for q in sorted(Path(s.quarantine_dir).glob("*/report.md")) if Path(s.quarantine_dir).exists() else []:
        print(f"quarantined: {q.parent}  (report: {q})")

    _step("train: fit on the exact DVC rev, log to MLflow, register, gate vs champion")
    _run("train", {"reason": "demo"})
    _summary(s)
    return 0


def _summary(s) -> None:
    from include.tracking import client, configure_mlflow

    configure_mlflow()
    c = client()
    _step("summary")
    try:
        versions = c.search_model_versions(f"name='{s.model_name}'")
    except Exception as err:  # noqa: BLE001 - a summary must not hide the run's own result
        print(f"no registered model yet ({err})")
        return
    for v in sorted(versions, key=lambda v: int(v.version)):
        tags = v.tags
        print(f"{s.model_name} v{v.version}: gate={tags.get('gate_decision', '-')} "
              f"data_rev={tags.get('data_rev', '?')[:10]} family={tags.get('family', '?')} "
              f"reason={tags.get('reason', '?')} aliases={list(v.aliases)}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {s.mlflow_tracking_uri}")


if __name__ == "__main__":
    sys.exit(main())
