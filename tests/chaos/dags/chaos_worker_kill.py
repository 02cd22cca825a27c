"""Test-only DAG for tests/chaos/test_worker_kill.py (its own dags folder, never deployed).

`hold` writes the pids of its task process and of the worker supervising it; the first try to get
that far sleeps so the test can kill -9 both, a later one returns at once. (Not `try_number == 1`:
on a loaded machine a first try can fail before it runs, e.g. on a timed-out API call.)
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task


@dag(
    dag_id="chaos_worker_kill",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=1)},
    params={"marker_dir": Param(".", type="string")},
    tags=["test"],
)
def chaos_worker_kill():
    @task
    def hold(params=None, ti=None) -> int:
        import os
        import time
        from pathlib import Path

        markers = Path(params["marker_dir"])
        first = not any(markers.glob("try*.pids"))
        (markers / f"try{ti.try_number}.pids").write_text(f"{os.getpid()} {os.getppid()}")
        if first:
            time.sleep(900)  # killed here by the test
        return ti.try_number

    hold()


chaos_worker_kill()
