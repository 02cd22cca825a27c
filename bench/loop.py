"""Time from a batch landing to its model serving as champion, on a live embedded Airflow.

Starts `airflow standalone` (LocalExecutor, SQLite) in a temporary state dir, lands one daily
batch, triggers `ingest` through the REST API (as an object-created notification would; the DAG's
own schedule polls every 5 minutes), then lets Asset scheduling run train and deploy, and polls the
gateway until it answers with the new champion. Prints each stage's span and the total
(goal < 120 s on this 2-core machine). Usage: python bench/loop.py [--rows 3000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

from include.config import PROJECT_ROOT
from include.demo_data import as_requests, make_batch, write_batch

sys.path.insert(0, str(PROJECT_ROOT))  # the live-stack harness is shared with the e2e tests
from tests.e2e.live import live_stack

GOAL_S = 120


def _iso(ts: str | None) -> float | None:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    with live_stack("embedded", state) as live:
        gateway = f"http://127.0.0.1:{live.env['MLOPS_SERVING_PORT']}"
        row = as_requests(make_batch(9, 1))[0]
        t0 = time.time()
        write_batch(make_batch(0, args.rows), state / "landing" / "sessions" / "day000.csv")
        live.trigger("ingest")
        served_at = None
        while time.time() - t0 < 600:
            try:
                r = httpx.post(f"{gateway}/predict", json={"instances": [row]}, timeout=5)
                if r.status_code == 200:
                    served_at = time.time()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        if served_at is None:
            raise SystemExit("no champion served within 600 s; see " + str(live.log))
        print(f"batch of {args.rows} rows landed -> champion v{r.json()['model_version']} serving: "
              f"{served_at - t0:.1f} s (goal < {GOAL_S} s)")
        for dag_id in ("ingest", "train", "deploy"):
            run = live.runs(dag_id)[0]
            q, start, end = _iso(run.get("queued_at")), _iso(run.get("start_date")), _iso(run.get("end_date"))
            rel = {k: (f"+{v - t0:5.1f} s" if v else "   -   ") for k, v in
                   (("queued", q), ("started", start), ("ended", end))}
            print(f"  {dag_id:<7} queued {rel['queued']}, started {rel['started']}, ended {rel['ended']} "
                  f"({run['run_type']}, {run['state']})")


if __name__ == "__main__":
    main()
