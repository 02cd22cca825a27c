"""
### ingest: validate landed batches with Great Expectations, version them with DVC

`find_batches` ─► `validate` (one mapped task per batch) ─► `commit` ─► `report`

* **validate**: reads the batch safely (size/row limits, encoding, delimiter, header) and runs the
  GX suite generated from the dataset spec. A bad batch is moved to the quarantine directory with
  `report.json` + `report.md`, and its task fails with a message naming the batch and the first
  failures. Nothing downstream changes.
* **commit**: `dvc add` + git commit + `dvc push` for each good batch (under a lock: DVC operations
  never overlap), then emits the `dataset` Asset with extra `{dvc_rev, md5, rows, validation_id}`,
  which schedules `train`. A batch that is already in the dataset is a no-op and emits nothing.
* **report**: fails the run if any batch was quarantined, listing where its report is.

Run it by dropping CSV files into the landing zone (`MLOPS_LANDING`, default `state/landing`),
or trigger it from the UI with a glob, a dataset name and **dry run** (validate only).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Metadata, Param, dag, task

from include.assets import DATASET


@dag(
    dag_id="ingest",
    schedule="*/5 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "ingest"],
    default_args={"owner": "mlops", "retries": 2, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "batch_glob": Param("*.csv*", type="string", title="Batch file glob",
                            description="Which files in the landing zone to ingest (e.g. `day-003.csv`)."),
        "dataset": Param("sessions", type="string", title="Dataset",
                         description="Name of the dataset spec in include/specs/ the batches follow."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Validate only: quarantine bad batches but commit nothing."),
    },
)
def ingest():
    @task
    def find_batches(params=None) -> list[str]:
        from include.ingestion import list_landed

        batches = list_landed(params["batch_glob"])
        print(f"{len(batches)} batch(es) waiting: {batches}")
        return batches

    @task(map_index_template="{{ batch_name }}")
    def validate(batch_ref: str, params=None) -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from include.ingestion import validate_landed

        get_current_context()["batch_name"] = batch_ref.rsplit("/", 1)[-1]
        from include.validation import BatchRejected

        try:
            return validate_landed(batch_ref, params["dataset"])
        except BatchRejected as err:
            # AirflowFailException skips the retries: retrying cannot make a rejected batch valid.
            raise AirflowFailException(f"{err} (quarantined at {err.quarantine_path})") from err

    @task(outlets=[DATASET], trigger_rule="all_done")
    def commit(validated: list[dict], params=None):
        from airflow.sdk.exceptions import AirflowSkipException

        from include.ingestion import commit_validated

        good = [v for v in validated if v]
        if params["dry_run"] or not good:
            raise AirflowSkipException("dry run: nothing committed" if good else "no valid batch to commit")
        extra = commit_validated(good, params["dataset"])
        if extra is None:
            raise AirflowSkipException("every batch was already in the dataset: nothing new")
        print(f"dataset {extra['dataset']} is now at {extra['dvc_rev'][:10]}: {extra}")
        yield Metadata(DATASET, extra)

    @task(trigger_rule="all_done")
    def report(batches: list[str], validated: list[dict]) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        passed = {v["batch"] for v in validated if v}
        rejected = [b for b in batches if b not in passed]
        if rejected:
            raise AirflowFailException(f"{len(rejected)} batch(es) quarantined: {rejected}")

    batches = find_batches()
    validated = validate.expand(batch_ref=batches)
    commit(validated) >> report(batches, validated)


ingest()
