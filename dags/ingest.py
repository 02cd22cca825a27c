"""
### ingest: validate landed batches with Great Expectations, version them with DVC

`find_batches` ─► `validate` (one mapped task per batch) ─► `by_dataset` ─► `commit` (one per dataset) ─► `report`
                                                                                     └─► `confirm`

Every dataset has its own landing prefix: `<landing>/<dataset>/` (a directory or an S3 prefix;
`<dataset>` is a spec name in `include/specs/`). The scheduled run takes every dataset's new files.

* **validate**: reads the batch safely (size/row limits, encoding, delimiter, header) and runs the
  GX suite generated from its dataset's spec. A bad batch is moved to the quarantine directory with
  `report.json` + `report.md`, and its task fails with a message naming the batch and the first
  failures. Nothing downstream changes.
* **commit**: per dataset, `dvc add` + git commit + `dvc push` for each good batch (under a lock:
  DVC operations never overlap), then emits the `dataset` Asset with extra
  `{dataset, dvc_rev, md5, rows, validation_id}`, which schedules `train`. A batch that is already
  in the dataset is a no-op. The git commit is the commit point: a retry after a crash anywhere in
  it completes or undoes the partial state (docs/reliability.md) and still announces the revision.
* **confirm**: records the announced revisions, so a later run never announces one twice.
* **report**: one line when every batch passed and was committed. A quarantined batch (or a failed
  commit) leaves it `upstream_failed`, which fails the run without a second error: the failed
  `validate` instance is the one place that says which batch, why, and where its report is.

Run it by dropping CSV files into `MLOPS_LANDING/<dataset>/` (default `state/landing/<dataset>/`),
or trigger it from the UI with a glob, a dataset and **dry run** (validate only).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from include.assets import DATASET
from include.catalog import dataset_names

DATASETS = dataset_names()


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
        "batch_glob": Param("*.csv*", type="string", minLength=1, title="Batch file glob",
                            description="Which files in each dataset's landing prefix to ingest (e.g. `day-003.csv`)."),
        "dataset": Param(None, type=["null", "string"], enum=[None, *DATASETS], title="Dataset",
                         values_display={"None": "(every dataset)", **{d: d for d in DATASETS}},
                         description="Only this dataset's landing prefix (<landing>/<dataset>/). Empty: every dataset."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Validate only: quarantine bad batches but commit nothing."),
    },
)
def ingest():
    @task(multiple_outputs=False)
    def find_batches(params=None) -> list[dict]:
        from include.catalog import dataset_names
        from include.ingestion import list_landed, stray_landed

        known = dataset_names()
        datasets = [params["dataset"]] if params["dataset"] else known
        batches = [{"dataset": d, "ref": ref} for d in datasets for ref in list_landed(d, params["batch_glob"])]
        stray = stray_landed(known)
        if stray:
            print(f"WARNING: {len(stray)} file(s)/folder(s) at the landing root belong to no dataset, not ingested "
                  f"(put them under <landing>/<dataset>/): {stray[:10]}")
        print(f"{len(batches)} batch(es) waiting: {[b['dataset'] + ': ' + b['ref'] for b in batches]}")
        return batches

    @task(multiple_outputs=False, map_index_template="{{ batch_name }}")
    def validate(batch: dict) -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from include.failfast import fail_fast
        from include.ingestion import validate_landed
        from include.validation import BatchRejected

        get_current_context()["batch_name"] = f"{batch['dataset']}/{batch['ref'].rsplit('/', 1)[-1]}"
        try:
            with fail_fast():
                return {**validate_landed(batch["ref"], batch["dataset"]), "dataset": batch["dataset"]}
        except BatchRejected as err:
            # AirflowFailException skips the retries: retrying cannot make a rejected batch valid.
            # `from None`: the message says it all; the chained traceback would repeat it.
            raise AirflowFailException(f"{err} (quarantined at {err.quarantine_path})") from None

    @task(multiple_outputs=False, trigger_rule="all_done")
    def by_dataset(validated: list[dict], params=None) -> list[dict]:
        from airflow.sdk.exceptions import AirflowSkipException

        # [:] reads a mapped task's XComs in one request; iterating asks for one past the end, which
        # the task SDK logs as "[error] XCom not found" on every successful run
        good = [v for v in validated[:] if v]
        if params["dry_run"] or not good:
            raise AirflowSkipException("dry run: nothing committed" if good else "no valid batch to commit")
        groups: dict[str, list[dict]] = {}
        for v in good:
            groups.setdefault(v["dataset"], []).append(v)
        return [{"dataset": d, "batches": b} for d, b in groups.items()]

    @task(outlets=[DATASET], map_index_template="{{ dataset }}", multiple_outputs=False)
    def commit(group: dict, outlet_events=None) -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowSkipException

        from include.ingestion import commit_validated

        get_current_context()["dataset"] = group["dataset"]
        # a retry after a crash finds the commit done and returns the same extra until `confirm`
        # records the event as announced: the revision is announced once, never lost
        extra = commit_validated(group["batches"], group["dataset"])
        if extra is None:
            raise AirflowSkipException(f"every {group['dataset']} batch was already in the dataset: nothing new")
        print(f"dataset {extra['dataset']} is now at {extra['dvc_rev'][:10]}: {extra}")
        outlet_events[DATASET].extra = extra  # recorded by Airflow together with this task's success
        return extra

    @task(trigger_rule="all_done")
    def confirm(extras: list[dict]) -> None:
        """The events of the commits that succeeded are recorded now: no later run repeats them."""
        from include.ingestion import confirm_announced

        for extra in extras[:]:  # one request, see by_dataset
            if extra:
                confirm_announced(extra)

    @task  # all_success: runs only when nothing was quarantined and every commit succeeded
    def report(validated: list[dict]) -> None:
        passed = validated[:]  # one request, see by_dataset
        print(f"{len(passed)} batch(es) validated and committed")

    batches = find_batches()
    validated = validate.expand(batch=batches)
    committed = commit.expand(group=by_dataset(validated))
    committed >> report(validated)
    confirm(committed)


ingest()
