"""DAG run outcomes to the Pushgateway (include/metrics_push.py), for the DagRunFailed alert.

An Airflow listener: the scheduler calls it when a DAG run ends (and the API server when a run's
state is set by hand). It pushes only when MLOPS_PUSHGATEWAY_URL is set, within a few seconds at
most, and never raises: monitoring must not stall or break the scheduler.
"""

from __future__ import annotations

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin


def _ended(dag_run) -> float | None:
    end = getattr(dag_run, "end_date", None)
    return end.timestamp() if end else None


class DagRunOutcomes:
    @hookimpl
    def on_dag_run_success(self, dag_run, msg):
        from include.metrics_push import dag_run_outcome

        dag_run_outcome(dag_run.dag_id, "success", _ended(dag_run))

    @hookimpl
    def on_dag_run_failed(self, dag_run, msg):
        from include.metrics_push import dag_run_outcome

        dag_run_outcome(dag_run.dag_id, "failed", _ended(dag_run))


class MlopsMetricsPlugin(AirflowPlugin):
    name = "mlops_metrics"
    listeners = [DagRunOutcomes()]
