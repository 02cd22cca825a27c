"""Parse time of every DAG file, as `airflow dags report` measures it (goal: < 0.2 s per file).

Also prints a cold figure per file: a fresh interpreter that has already imported airflow.sdk
imports only that DAG file, which is what a worker pays again before each task in Airflow 3.
Usage: python bench/parse_times.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from include.config import PROJECT_ROOT as ROOT
from include.config import airflow_env

GOAL_S = 0.2
COLD = r"""
import importlib.util, sys, time
import airflow.sdk  # the worker has this already
t = time.perf_counter()
spec = importlib.util.spec_from_file_location("dagfile", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(time.perf_counter() - t)
"""


def main() -> int:
    env = {**os.environ, **airflow_env()}
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True)
    t = time.perf_counter()
    out = subprocess.run([airflow, "dags", "report", "-o", "json"], env=env, capture_output=True,
                         text=True, check=True).stdout
    wall = time.perf_counter() - t
    rows = json.loads(next(line for line in out.splitlines() if line.startswith("[{")))
    print(f"{'DAG file':<22}{'report (s)':>12}{'cold (s)':>10}  goal < {GOAL_S} s")
    worst = 0.0
    for row in rows:
        h, m, s = row["duration"].split(":")
        report_s = int(h) * 3600 + int(m) * 60 + float(s)
        cold = float(subprocess.run([sys.executable, "-c", COLD, str(ROOT / "dags" / row["file"])],
                                    env=env, capture_output=True, text=True, check=True).stdout)
        worst = max(worst, report_s, cold)
        flag = "ok" if max(report_s, cold) < GOAL_S else "SLOW"
        print(f"{row['file']:<22}{report_s:>12.3f}{cold:>10.3f}  {flag}  dags={row['dags']}")
    print(f"`airflow dags report` wall time: {wall:.2f} s; worst file: {worst:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
