"""
### monitor_drift: Evidently on served traffic; retrain when the policy says the drift is real

`check` ─► `retrain_conf` (short-circuit) ─► `trigger_train`

* **check**: reads the prediction-log window of the current `champion`, compares it with the
  champion's own training data (its recorded DVC revision) using Evidently, with sampling for
  large windows and multiple-testing correction plus effect-size floors; adds model quality when
  late labels for served sessions have arrived in a newer dataset revision. The HTML report and
  metrics go to an MLflow "monitoring" run linked to the model version.
* **retrain_conf**: the retrain policy (`include/policies/drift_<dataset>.yaml`): minimum sample,
  drift share / critical features, cooldown after a retrain, maximum retrains per day. A retry of
  this run replays the recorded decision, so it never triggers twice.
* **trigger_train**: triggers `train` with conf `{reason: "drift", drifted_features, report_uri}`,
  with a run id derived from this run (a second trigger for the same check is impossible).

Manual runs: pick the window in hours, or force a retrain (recorded as forced by an operator).
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Param, dag, task


@dag(
    dag_id="monitor_drift",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "monitoring"],
    render_template_as_native_obj=True,  # the train conf is passed to trigger_train as a dict
    default_args={"owner": "mlops", "retries": 2, "retry_delay": pendulum.duration(seconds=30)},
    params={
        "window_hours": Param(24, type="number", minimum=0.01, title="Window (hours)",
                              description="How far back in the prediction log to look."),
        "force_retrain": Param(False, type="boolean", title="Force retrain",
                               description="Trigger `train` even if the policy would not (still reported)."),
    },
)
def monitor_drift():
    @task
    def check(params=None, run_id=None) -> dict:
        from include.monitoring import check_champion

        summary = check_champion(window_hours=float(params["window_hours"]), run_key=run_id,
                                 force_retrain=params["force_retrain"])
        print({k: summary.get(k) for k in ("skipped", "n_current", "share_drifted", "drifted_features",
                                            "quality", "decision", "report_uri")})
        return summary

    @task.short_circuit
    def retrain_conf(summary: dict):
        return summary.get("train_conf") or False

    conf = retrain_conf(check())
    trigger_train = TriggerDagRunOperator(
        task_id="trigger_train",
        trigger_dag_id="train",
        trigger_run_id="drift__{{ run_id }}",
        conf="{{ ti.xcom_pull(task_ids='retrain_conf') }}",
        skip_when_already_exists=True,
        wait_for_completion=False,
    )
    conf >> trigger_train


monitor_drift()
