"""`mlops-ci check` as a CI job runs it, against remote stores (issue 19): an `mlflow server` on
PostgreSQL with its artifacts on S3 (moto's S3 API server), the DVC remote on the same S3, and a
champion trained and registered there by the project's train path. Then the steps of the reusable
workflow's `model` job (.github/workflows/model-ci.yml) run as written, in a checkout of this
project, with only the environment that job sets (its secrets filled in): the data repo is cloned
fresh from its git origin, and the repo that ingested the rows is deleted first, so the rows can
only come from the S3 remote; `mlops-ci` is the installed command. The report must be right and
nothing may change in the real stores (registry, runs, every S3 object)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from include.config import PROJECT_ROOT
from include.demo_data import make_batch
from tests.services import SESSIONS_MODEL, mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "model-ci.yml"

# the loop's train task in its own process, run from the checkout: trains the dataset at HEAD of
# the data repo and crowns the version (what train + deploy leave behind)
_TRAIN_CHAMPION = """
from include.spec import load_spec
from include.tracking import client
from include.training.train import train_and_register
from include.versioning import DataRepo
spec = load_spec("sessions")
repo = DataRepo()
lin = repo.lineage("sessions", None)
lineage = {k: lin[k] for k in ("dataset", "data_rev", "data_md5", "validation_id")} | {"dag_run_id": "loop-train"}
out = train_and_register(repo.load("sessions", lin["data_rev"], spec), spec, lineage=lineage, run_key="loop-train")
client().set_registered_model_alias(spec.model_name, "champion", out["version"])
print(out["version"])
"""


def _checkout(dst: Path) -> str:
    """This project as CI checks out a pull request: a clone of its repository with the working
    tree's changes (modified, deleted and new files) as one commit on top, so the code under test
    is what is on disk and its commit is not the project's HEAD. Returns that commit."""
    subprocess.run(["git", "clone", "-q", "--shared", str(PROJECT_ROOT), str(dst)], check=True)

    def ls(*flags: str) -> list[str]:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "-z", *flags], check=True,
                             capture_output=True, text=True).stdout
        return [p for p in out.split("\0") if p]

    deleted = set(ls("-d"))
    for rel in ls("-m", "-o", "--exclude-standard"):
        src = PROJECT_ROOT / rel
        if rel in deleted or not src.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)
    for rel in deleted:
        (dst / rel).unlink(missing_ok=True)
    git = ["git", "-C", str(dst)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the pull request under test"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


@contextmanager
def _mlflow_server(artifacts: str, bucket: str, s3_url: str, log: Path):
    """`mlflow server` on a fresh PostgreSQL database, artifacts on s3://bucket/mlflow: proxied by
    the server (docker-compose.yaml's way: clients need no S3 credentials for MLflow) or direct
    (the server hands out s3:// locations and clients read and write S3 themselves)."""
    where = (["--serve-artifacts", "--artifacts-destination", f"s3://{bucket}/mlflow"] if artifacts == "proxied"
             else ["--no-serve-artifacts", "--default-artifact-root", f"s3://{bucket}/mlflow"])
    with mlflow_server(log, *where, env={"MLFLOW_S3_ENDPOINT_URL": s3_url}, db_prefix="mlflow_ci") as url:
        yield url


def _real_state(url: str, s3, bucket: str) -> dict:
    """Everything mlops-ci must leave alone: the registered model (versions with tags, run and
    status; aliases; model tags), every experiment and run of the tracking server, and every object
    in the bucket (MLflow artifacts and the DVC remote) with its ETag."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c = MlflowClient(url, url)
    rm = c.get_registered_model(SESSIONS_MODEL)
    exps = c.search_experiments(view_type=ViewType.ALL)
    runs = c.search_runs([e.experiment_id for e in exps], run_view_type=ViewType.ALL, max_results=1000)
    objects = {o["Key"]: o["ETag"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
               for o in page.get("Contents", [])}
    return {
        "versions": {v.version: (dict(v.tags), v.run_id, v.status)
                     for v in c.search_model_versions(f"name='{SESSIONS_MODEL}'")},
        "aliases": dict(rm.aliases), "model_tags": dict(rm.tags),
        "experiments": sorted((e.experiment_id, e.name, e.lifecycle_stage) for e in exps),
        "runs": sorted((r.info.run_id, r.info.status, len(r.data.metrics), len(r.data.tags)) for r in runs),
        "objects": objects,
    }


def _ci_job(workspace: Path, secrets: dict[str, str], summary: Path) -> tuple[dict, dict[str, str]]:
    """The workflow's `model` job for dataset sessions with ``--reproduce``: its steps by name, and
    the environment a runner gives them (the job's env with every ${{ }} resolved; a secret that is
    not set is an empty string, as on GitHub) on top of a bare runner's."""
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["model"]
    context = {"matrix.dataset": "sessions", "github.workspace": str(workspace),
               "inputs.reproduce && '--reproduce' || ''": "--reproduce"}

    def resolve(match: re.Match) -> str:
        expr = match.group(1).strip()
        if expr.startswith("secrets."):
            return secrets.get(expr.removeprefix("secrets."), "")
        assert expr in context, f"the workflow's model job uses ${{{{ {expr} }}}}: teach this test its value"
        return context[expr]

    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ["HOME"], "LANG": "C.UTF-8",
           "CI": "true", "GITHUB_WORKSPACE": str(workspace), "GITHUB_STEP_SUMMARY": str(summary),
           # what `pip install --no-deps -e .` of the checkout does: its `include` is the one imported
           "PYTHONPATH": str(workspace)}
    if os.environ.get("TMPDIR"):
        env["TMPDIR"] = os.environ["TMPDIR"]
    env.update({k: re.sub(r"\$\{\{(.*?)\}\}", resolve, str(v)) for k, v in job["env"].items()})
    steps = {s["name"]: s["run"] for s in job["steps"] if "run" in s}
    return steps, env


def _run_step(script: str, workspace: Path, env: dict) -> subprocess.CompletedProcess:
    # GitHub's `run` shell: bash --noprofile --norc -eo pipefail {0}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=workspace,
                          env=env, capture_output=True, text=True, timeout=3600)


@pytest.mark.parametrize("artifacts", ["proxied", "direct"])
def test_workflow_model_job_against_remote_mlflow_and_s3_dvc(artifacts, state, s3_server, tmp_path, monkeypatch):
    import boto3

    from include.versioning import DataRepo

    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    bucket = f"mlops-ci-{artifacts}-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    # the loop's environment (Airflow workers in distributed mode): the stores are all remote
    for k, v in {**creds, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server,
                 "MLOPS_S3_ENDPOINT": s3_server, "MLFLOW_S3_ENDPOINT_URL": s3_server,
                 "MLOPS_DVC_REMOTE": f"s3://{bucket}/dvc"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("MLOPS_MLFLOW_ARTIFACT_ROOT")  # the server decides where artifacts go

    workspace = tmp_path / "checkout"
    sha = _checkout(workspace)
    with _mlflow_server(artifacts, bucket, s3_server, tmp_path / "mlflow-server.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", url)

        # ingest: three days of sessions into the data repo, pushed to the S3 remote
        repo = DataRepo()
        for day in range(3):
            v = repo.commit_batch("sessions", make_batch(day, 3000), batch_md5=f"md5-sessions-{day}",
                                  batch_name=f"day-{day}", validation_id=f"val-{day}")
        # train + deploy: the checkout's code trains the champion in a process of its own
        out = subprocess.run([sys.executable, "-c", _TRAIN_CHAMPION], cwd=workspace, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(workspace)}, timeout=1800)
        assert out.returncode == 0, out.stderr[-4000:]
        champion = out.stdout.strip().splitlines()[-1]
        from mlflow.tracking import MlflowClient

        mv = MlflowClient(url, url).get_model_version(SESSIONS_MODEL, champion)
        assert mv.tags["code_sha"] == sha and mv.tags["data_rev"] == v.dvc_rev
        expect = "mlflow-artifacts:" if artifacts == "proxied" else f"s3://{bucket}/mlflow/"
        assert MlflowClient(url, url).get_run(mv.run_id).info.artifact_uri.startswith(expect)

        # the data repo's git history goes to its origin (a bare repo: no data files); the repo that
        # ingested, with its DVC cache, is deleted: the rows now exist only in the S3 remote
        origin = tmp_path / "data-origin.git"
        subprocess.run(["git", "clone", "-q", "--bare", str(repo.path), str(origin)], check=True)
        shutil.rmtree(repo.path)
        assert any(k.startswith("dvc/") for k in _real_state(url, s3, bucket)["objects"])
        before = _real_state(url, s3, bucket)
        assert before["aliases"] == {"champion": champion}

        # the CI job: only the workflow's environment, its secrets pointing at these stores
        summary = tmp_path / "step-summary.md"
        secrets = {**creds, "MLFLOW_TRACKING_URI": url, "MLOPS_DATA_REPO_URL": str(origin),
                   "MLOPS_DVC_REMOTE": f"s3://{bucket}/dvc", "AWS_ENDPOINT_URL": s3_server}
        steps, env = _ci_job(workspace, secrets, summary)
        clone = Path(env["MLOPS_DATA_REPO"])

        step = _run_step(steps["data repo (DVC pulls the champion's rev from its remote)"], workspace, env)
        assert step.returncode == 0, step.stderr
        assert (clone / "manifests" / "sessions.json").is_file() and not list(clone.rglob("*.parquet"))
        assert not (clone / ".dvc" / "cache").exists()  # a fresh clone: nothing cached

        # 1. the pull request changes nothing the model sees: no significant change, exit 0, and
        #    the champion's own commit (a worktree of the checkout) reproduces its metrics
        step = _run_step(steps["mlops-ci check"], workspace, env)
        report = (workspace / "model-ci-report.md").read_text() if (workspace / "model-ci-report.md").exists() else ""
        assert step.returncode == 0, f"{report}\n{step.stderr[-6000:]}"
        assert summary.read_text() == report  # the job summary is the report
        assert "**NO SIGNIFICANT CHANGE**" in report and "identical scores on all 1800 unseen holdout rows" in report
        assert f"`{SESSIONS_MODEL}` v{champion}" in report and v.dvc_rev[:10] in report
        roc = next(ln for ln in report.splitlines() if ln.startswith("| roc_auc |"))
        assert roc.split("|")[2] == roc.split("|")[3] and roc.endswith("| +0.0000 |"), roc
        assert "| device=mobile |" in report
        # the code is the checkout's (not this project's HEAD), the same commit as the champion's
        assert f"`{sha[:12]}` vs the champion's `{sha[:12]}` (same commit)" in report
        # the lock and the model's pins were read from the champion's artifacts on the remote store
        assert "vs the lock the champion's run logged (" in report and "no locked package changed" in report
        assert "| scikit-learn |" in report
        assert f"the champion's own code (`{sha[:12]}`, a temporary git worktree) reproduced all" in report
        assert _real_state(url, s3, bucket) == before

        # 2. a change that weakens the model (five boosting rounds of stumps): rejected, exit 1
        weak = subprocess.run([str(VENV_BIN / "mlops-ci"), "check", "--dataset", "sessions", "--param", "max_iter=5",
                               "--param", "max_leaf_nodes=2", "--report", str(tmp_path / "weak.md")],
                              cwd=workspace, env=env, capture_output=True, text=True, timeout=3600)
        report = (tmp_path / "weak.md").read_text() if (tmp_path / "weak.md").exists() else ""
        assert weak.returncode == 1, f"{report}\n{weak.stderr[-6000:]}"
        assert "**REJECTED**" in report
        roc = next(ln for ln in report.splitlines() if ln.startswith("| roc_auc |"))
        assert roc.endswith("▼ |"), roc
        assert _real_state(url, s3, bucket) == before

        # 3. a DVC remote that does not hold the champion's rows (a wrong MLOPS_DVC_REMOTE), from a
        #    fresh clone: a setup error (exit 2) naming the remote, not a verdict
        wrong = {**env, "MLOPS_DVC_REMOTE": f"s3://{bucket}/elsewhere", "MLOPS_DATA_REPO": str(tmp_path / "clone-2")}
        subprocess.run(["git", "clone", "-q", str(origin), wrong["MLOPS_DATA_REPO"]], check=True)
        out = subprocess.run([str(VENV_BIN / "mlops-ci"), "check", "--dataset", "sessions"], cwd=workspace,
                             env=wrong, capture_output=True, text=True, timeout=1800)
        assert out.returncode == 2, out.stderr[-6000:]
        assert f"cannot be read from the DVC remote 's3://{bucket}/elsewhere'" in out.stderr, out.stderr[-6000:]
        assert _real_state(url, s3, bucket) == before
