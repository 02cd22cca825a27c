"""`retrain`: trigger the `train` DAG through Airflow's REST API, optionally wait and show progress.

    retrain --reason "new promo season" [--data-rev SHA] [--family hgb] [--param max_iter=200] [--wait]

Authentication: POST /auth/token with a username and password (``AIRFLOW_USERNAME`` /
``AIRFLOW_PASSWORD``; in embedded mode, the admin password that `airflow standalone` generated in
``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``), then a Bearer token on
POST /api/v2/dags/train/dagRuns. The API URL is ``MLOPS_AIRFLOW_API_URL`` (default
http://127.0.0.1:8080). Exit status: 0 when the run was queued (or, with --wait, succeeded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

TERMINAL = {"success", "failed"}


class ApiError(RuntimeError):
    pass


def api_url() -> str:
    return os.environ.get("MLOPS_AIRFLOW_API_URL", "http://127.0.0.1:8080").rstrip("/")


def credentials() -> tuple[str, str]:
    user = os.environ.get("AIRFLOW_USERNAME", "admin")
    password = os.environ.get("AIRFLOW_PASSWORD")
    if password:
        return user, password
    from include.config import settings

    generated = settings().airflow_home / "simple_auth_manager_passwords.json.generated"
    if generated.exists():
        passwords = json.loads(generated.read_text())
        if user in passwords:
            return user, passwords[user]
    raise ApiError(f"no password for Airflow user {user!r}: set AIRFLOW_PASSWORD (or run `airflow standalone`, "
                   f"which writes {generated})")


def token(client, base: str) -> str:
    user, password = credentials()
    r = client.post(f"{base}/auth/token", json={"username": user, "password": password})
    if r.status_code not in (200, 201):
        raise ApiError(f"login to {base} as {user!r} failed: {r.status_code} {r.text[:300]}")
    return r.json()["access_token"]


def trigger(client, base: str, headers: dict, dag_id: str, conf: dict) -> dict:
    r = client.post(f"{base}/api/v2/dags/{dag_id}/dagRuns", headers=headers,
                    json={"logical_date": None, "conf": conf})
    if r.status_code == 409:
        raise ApiError(f"a run with this id already exists: {r.text[:300]}")
    if r.status_code >= 400:
        raise ApiError(f"triggering {dag_id} failed: {r.status_code} {r.text[:500]}")
    return r.json()


def wait(client, base: str, headers: dict, dag_id: str, run_id: str, *, timeout: float, out=sys.stdout) -> str:
    from urllib.parse import quote

    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        run = client.get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}", headers=headers).json()
        tis = client.get(f"{base}/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances",
                         headers=headers).json().get("task_instances", [])
        progress = ", ".join(f"{t['task_id']}={t['state']}" for t in sorted(tis, key=lambda t: t["task_id"]))
        line = f"[{time.strftime('%H:%M:%S')}] {run['state']}: {progress}"
        if line.split(" ", 1)[1] != last:
            print(line, file=out, flush=True)
            last = line.split(" ", 1)[1]
        if run["state"] in TERMINAL:
            return run["state"]
        time.sleep(2)
    raise ApiError(f"run {run_id} did not finish within {timeout:.0f}s")


def key_value_arg(text: str) -> tuple[str, object]:
    """argparse type of `--param KEY=VALUE` (the value as JSON when it parses, else the string)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--param needs key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def retrain_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="retrain", description="Trigger the train DAG through the Airflow REST API.")
    ap.add_argument("--reason", required=True, help="why: recorded on the model version's lineage tags")
    ap.add_argument("--data-rev", default="latest", help="data-repo sha to train on (default: latest)")
    ap.add_argument("--dataset", default=None,
                    help="dataset spec to retrain (default: every dataset that has data)")
    ap.add_argument("--family", choices=["hgb", "logreg", "ridge"], default=None)
    ap.add_argument("--param", action="append", type=key_value_arg, default=[], metavar="KEY=VALUE",
                    help="estimator hyperparameter (repeatable), e.g. --param max_iter=200")
    ap.add_argument("--force", action="store_true",
                    help="train even if a version with the same recipe (data rev, code, config) exists")
    ap.add_argument("--wait", action="store_true", help="wait for the run, printing task progress")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args(argv)
    import httpx

    # no dataset: the train DAG trains every dataset that has data (what its form's default does)
    conf: dict = {"reason": args.reason, "data_rev": args.data_rev}
    if args.dataset:
        conf["dataset"] = args.dataset
    if args.family:
        conf["family"] = args.family
    if args.param:
        conf["hyperparams"] = dict(args.param)
    if args.force:
        conf["force"] = True
    base = api_url()
    try:
        with httpx.Client(timeout=30) as client:
            headers = {"Authorization": f"Bearer {token(client, base)}"}
            run = trigger(client, base, headers, "train", conf)
            run_id = run["dag_run_id"]
            print(f"triggered train run {run_id} (state {run['state']}) with conf {json.dumps(conf)}")
            print(f"UI: {base}/dags/train/runs/{run_id}")
            if not args.wait:
                return 0
            state = wait(client, base, headers, "train", run_id, timeout=args.timeout)
            print(f"train run {run_id}: {state}")
            return 0 if state == "success" else 1
    except (ApiError, httpx.HTTPError) as err:
        print(f"retrain: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(retrain_main())
