"""
### monitor_drift: Evidently on served traffic; retrain when the policy says the drift is real

`datasets_with_champion` ─► `check` (one per dataset) ─► `retrain_requests` ─► `trigger_train` (one per retrain)

* **check**: for each dataset whose model has a `champion`, reads that champion's prediction-log
  window and compares it with its own training data (its recorded DVC revision) using Evidently,
  with sampling for large windows and multiple-testing correction plus effect-size floors; adds
  model quality when late labels for served rows have arrived in a newer dataset revision. The HTML
  report and metrics go to an MLflow "monitoring" run linked to the model version.
* **retrain_requests**: the dataset's retrain policy (`include/policies/drift_<dataset>.yaml`):
  minimum sample, drift share / critical features, cooldown after a retrain, maximum retrains per
  day. A retry of this run replays the recorded decision, so it never triggers twice.
* **trigger_train**: triggers `train` with conf `{dataset, reason: "drift", drifted_features,
  report_uri}`, with a run id derived from this run and the dataset (a second trigger for the same
  check is impossible). One dataset's retrain never touches another's model.

Manual runs: pick the window in hours, a single dataset, or force a retrain (recorded as forced).
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task

from include.catalog import dataset_names

DATASETS = dataset_names()


@dag(
    dag_id="monitor_drift",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "monitoring"],
    default_args={"owner": "mlops", "retries": 2, "retry_delay": pendulum.duration(seconds=30)},
    params={
        "window_hours": Param(24, type="number", minimum=0.01, title="Window (hours)",
                              description="How far back in the prediction log to look."),
        "dataset": Param(None, type=["null", "string"], enum=[None, *DATASETS], title="Dataset",
                         values_display={"None": "(every dataset with a champion)", **{d: d for d in DATASETS}},
                         description="Check only this dataset. Empty: every dataset whose model has a champion."),
        "force_retrain": Param(False, type="boolean", title="Force retrain",
                               description="Trigger `train` even if the policy would not (still reported)."),
    },
)
def monitor_drift():
    @task(multiple_outputs=False)
    def datasets_with_champion(params=None) -> list[str]:
        from include.failfast import fail_fast
        from include.monitoring import datasets_with_champion

        with fail_fast():
            datasets = datasets_with_champion()
        if params["dataset"]:
            datasets = [d for d in datasets if d == params["dataset"]]
        print(f"datasets with a champion to check: {datasets}")
        return datasets

    @task(multiple_outputs=False, map_index_template="{{ dataset }}")
    def check(dataset: str, params=None, run_id=None) -> dict:
        from airflow.sdk import get_current_context

        from include.failfast import fail_fast
        from include.monitoring import check_champion

        get_current_context()["dataset"] = dataset
        with fail_fast():
            summary = check_champion(dataset, window_hours=float(params["window_hours"]), run_key=run_id,
                                     force_retrain=params["force_retrain"])
        print({k: summary.get(k) for k in ("dataset", "skipped", "n_current", "share_drifted",
                                            "drifted_features", "quality", "decision", "report_uri")})
        return summary

    @task(multiple_outputs=False)
    def retrain_requests(summaries: list[dict], run_id=None) -> list[dict]:
        # the run id names the dataset too: one trigger per (check, dataset), never two
        return [{"trigger_run_id": f"drift__{run_id}__{s['dataset']}", "conf": s["train_conf"]}
                for s in summaries[:] if s and s.get("train_conf")]  # [:]: one XCom request, no miss logged

    TriggerDagRunOperator.partial(
        task_id="trigger_train",
        trigger_dag_id="train",
        skip_when_already_exists=True,
        wait_for_completion=False,
    ).expand_kwargs(retrain_requests(check.expand(dataset=datasets_with_champion())))


monitor_drift()
