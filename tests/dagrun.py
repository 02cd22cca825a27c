"""How tests run a DAG for real: parse ``dags/`` as the scheduler does and ``dag.test()`` one DAG in
this process (every task against the real services, on the session's Airflow metadata DB)."""

from __future__ import annotations


def run_dag(dag_id: str, conf: dict | None = None):
    """One run of ``dag_id`` with ``conf``; returns its DagRun (finished: success or failed)."""
    from airflow.dag_processing.dagbag import DagBag

    from include.config import PROJECT_ROOT

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag(dag_id).test(run_conf=conf)


def task_states(dr) -> dict[str, str]:
    """``{"task_id[map_index]": state}`` of a finished run (map_index -1 for unmapped tasks)."""
    return {f"{ti.task_id}[{ti.map_index}]": str(ti.state) for ti in dr.get_task_instances()}
