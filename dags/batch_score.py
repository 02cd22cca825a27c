"""
### batch_score: score a whole table offline with a registered model version, as `/predict` would

`plan` ─► `score` (one mapped task per partition: a CSV file or a range of Parquet row groups) ─► `finalize`
(one per dataset scored; `per_dataset` groups the partitions for it)

Runs on demand (UI form, REST `POST /api/v2/dags/batch_score/dagRuns` with conf
`{dataset, source, model_version, output}`):
* **plan** resolves the model version once (the dataset's `champion` unless a version number or
  alias is given) and the source: a data-repo revision (`latest` by default) or CSV/Parquet files
  by path, glob or `s3://` prefix; it records both in `<output>/<dataset>/<run>/_plan.json` and
  fetches the version's skops file once into `_model/` (its md5 in the plan), so score tasks never
  ask the registry;
* **score** reads its partition in bounded Arrow chunks, validates every row with the serving
  schema's rules (a bad row goes to `rejects/` with the same message the online 422 gives, the
  rest is scored), and writes `scores/part-N.parquet` whole (temp then rename/copy): a retry never
  leaves half a file or a duplicate; progress (rows/s, ETA) in the log;
* **finalize** (one per dataset) checks every partition is committed, writes `_manifest.json` (rows in, scored,
  rejected with reasons, score histogram), logs it as an MLflow run linked to the model version
  (experiment `batch-scoring`) and emits the `batch_predictions` Asset.

**Scheduled scoring** is opt-in per dataset, in `include/policies/batch_<dataset>.yaml`
(`on_new_data`: every new revision from `ingest`; `on_promotion`: after every promotion by
`deploy`). The DAG is scheduled on those Assets only when some policy asks; a triggered run
scores each dataset whose policy wants that event and logs why it skips the others. Without a
policy nothing runs by itself.

`lineage --batch-run <run>` traces a run (and `--key` one of its rows) back to the model version,
its data and code. A bad dataset, an unknown version or alias, or a source with nothing to score
fails at once with the cause.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Metadata, Param, dag, task

from include.assets import BATCH_PREDICTIONS
from include.batch.triggers import schedule
from include.catalog import dataset_names

DATASETS = dataset_names()


@dag(
    dag_id="batch_score",
    schedule=schedule(DATASETS),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["mlops", "batch"],
    default_args={"owner": "mlops", "retries": 2, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "dataset": Param(None, type=["null", "string"], enum=[None, *DATASETS], title="Dataset",
                         values_display={"None": "(the only dataset)", **{d: d for d in DATASETS}},
                         description="Dataset spec name: its rules validate the rows and its registered "
                                     "model scores them. Empty: the only dataset (else the run asks which)."),
        "source": Param("latest", type="string", title="Source",
                        description="A data-repo revision (`latest` = newest, or a git sha) of the dataset, or "
                                    "CSV/Parquet files: a path, a directory, a glob or an s3:// prefix."),
        "model_version": Param(None, type=["null", "string"], title="Model version",
                               examples=["champion", "challenger"],
                               description="A version number or an alias of the dataset's model. Empty: the "
                                           "`champion` alias, resolved once when the run starts."),
        "output": Param(None, type=["null", "string"], title="Output",
                        description="Root directory or s3:// prefix; the run writes <output>/<dataset>/<run>/. "
                                    "Empty: <state dir>/batch."),
        "partition_rows": Param(2_000_000, type="integer", minimum=1000, title="Rows per partition",
                                description="Parquet sources are split into row-group ranges of about this many "
                                            "rows, one mapped task each (a CSV file is one partition)."),
        "chunk_rows": Param(50_000, type="integer", minimum=100, title="Rows per chunk",
                            description="Rows read, validated and scored at a time: bounds a task's memory."),
    },
)
def batch_score():
    @task(multiple_outputs=False)
    def plan(params=None, dag_run=None, triggering_asset_events=None) -> list[dict]:
        from include.batch import BatchInputError, plan_jobs
        from include.batch.sources import SourceError
        from include.batch.triggers import requested
        from include.failfast import fail_fast

        with fail_fast(BatchInputError, SourceError, ValueError):
            return plan_jobs(requested(params, triggering_asset_events), dag_run.run_id)

    @task(multiple_outputs=False, map_index_template="{{ partition_label }}")
    def score(part: dict) -> dict:
        from airflow.sdk import get_current_context

        from include.batch import label, score_partition

        get_current_context()["partition_label"] = label(part)
        stats = score_partition(part)
        return {k: stats[k] for k in ("index", "rows_in", "scored", "rejected", "superseded")}

    @task(multiple_outputs=False)
    def per_dataset(parts: list[dict]) -> list[list[dict]]:
        from include.batch import by_output

        return by_output(list(parts))

    # one per dataset scored (a scheduled run may score several): one Asset event each
    @task(outlets=[BATCH_PREDICTIONS], map_index_template="{{ job_dataset }}")
    def finalize(parts: list[dict], scored: list[dict]):
        from airflow.sdk import get_current_context

        from include.batch import finalize, manifest_extra

        get_current_context()["job_dataset"] = parts[0]["dataset"]
        manifest = finalize(list(parts))
        print(f"batch run {manifest['batch_run_id']}: {manifest['scored']} scored, {manifest['rejected']} rejected "
              f"of {manifest['rows_in']} by {manifest['model']} v{manifest['version']} -> {manifest['output']}")
        yield Metadata(BATCH_PREDICTIONS, manifest_extra(manifest))

    parts = plan()
    finalize.partial(scored=score.expand(part=parts)).expand(parts=per_dataset(parts))


batch_score()
