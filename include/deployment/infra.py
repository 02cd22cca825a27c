"""Infra validation of a version before it serves (step 2 of the deploy): the golden rows of its
holdout, the offline scores training logged for them, the request the validation run reads (as
paths: XCom carries these, never rows or scores), and the local backend's own run of the check.
The Docker backend runs the same check through include/infra_validation_operator.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from include.config import PROJECT_ROOT, Settings, settings
from include.deployment.errors import DeployError

log = logging.getLogger(__name__)


def validation_env(s: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """(public, private) environment of an infra validation run. Private holds everything that
    may carry a credential (store URIs can embed a password, S3 keys, MLflow tokens): the Docker
    task passes it as ``private_environment``, which Airflow neither renders nor shows."""
    from include.infra_validation import CREDENTIAL_PREFIXES

    public = {"MLOPS_STATE_DIR": str(s.state_dir), "MLOPS_MLFLOW_ARTIFACT_ROOT": s.mlflow_artifact_root,
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    private = {"MLFLOW_TRACKING_URI": s.mlflow_tracking_uri, "MLFLOW_REGISTRY_URI": s.mlflow_registry_uri,
               **{k: v for k, v in os.environ.items() if k.startswith(CREDENTIAL_PREFIXES) and k != "MLFLOW_TRACKING_URI"}}
    return public, private


def golden_sample(model: str, version: str, s: Settings | None = None) -> Path:
    """The first GOLDEN_ROWS rows of the version's own holdout, saved where a container can read it."""
    import mlflow
    import pandas as pd

    from include.infra_validation import GOLDEN_ROWS
    from include.tracking import client, configure_mlflow
    from include.training.model_io import HOLDOUT_ARTIFACT

    s = s or settings()
    configure_mlflow()
    mv = client().get_model_version(model, str(version))
    # keyed by the version's run too: a registry rebuilt from scratch reuses version numbers
    out = s.state_dir / "deploy" / "golden" / f"{model}-v{version}-{mv.run_id}.parquet"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=HOLDOUT_ARTIFACT)
        pd.read_parquet(local).head(GOLDEN_ROWS).to_parquet(out, index=False)
        os.chmod(out, 0o644)
    return out


def expected_scores(model: str, version: str, dataset: str, golden: Path, s: Settings | None = None) -> Path:
    """The offline scores of the golden rows, as training logged them (``holdout/golden_scores.json``).

    Versions trained before training logged them are scored here, in the worker, with the
    registered artifact: for those a broken artifact fails in this step instead of in the image.
    """
    import tempfile

    from include.infra_validation import EXPECTED_ARTIFACT, score_golden
    from include.tracking import client, configure_mlflow, download_artifact

    s = s or settings()
    out = golden.with_suffix(".expected.json")
    if out.exists():
        return out
    configure_mlflow()
    run_id = client().get_model_version(model, str(version)).run_id
    source = f"runs:/{run_id}/{EXPECTED_ARTIFACT}"
    with tempfile.TemporaryDirectory(prefix="infra-expected-") as tmp:
        # absent: None (an old version); an unreachable store raises, and the task retries
        local, _ = download_artifact(source, tmp)
        scores = json.loads(Path(local).read_text())["scores"] if local else None
    if scores is None:
        log.warning("%s v%s has no %s (trained before it was logged): scoring the golden rows in this worker",
                    model, version, EXPECTED_ARTIFACT)
        scores, source = score_golden(model, str(version), str(golden), dataset), "scored by the deploy worker"
    partial = out.with_suffix(".tmp")
    partial.write_text(json.dumps({"scores": scores, "source": source}))
    os.chmod(partial, 0o644)
    partial.replace(out)
    return out


def prepare_infra_validation(model: str, version: str, dataset: str, image: str | None, backend: str,
                             dag_run_id: str, s: Settings | None = None) -> dict:
    """Inputs of one infra validation run, as paths (XCom carries these, never the rows or scores):
    the golden rows, the offline scores, where the verdict goes, the backend (which check runs),
    the image and a container name.

    The results directory is world-writable: the serving image runs as a non-root uid.
    """
    import hashlib
    import re

    s = s or settings()
    golden = golden_sample(model, version, s)
    expected = expected_scores(model, version, dataset, golden, s)
    results_dir = s.state_dir / "deploy" / "validation"
    results_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(results_dir, 0o777)
    run_key = hashlib.sha256(dag_run_id.encode()).hexdigest()[:10]  # one verdict file per deploy run
    results = results_dir / f"{model}-v{version}-{run_key}.json"
    argv = ["-m", "include.infra_validation", "--model", model, "--version", str(version), "--dataset", dataset,
            "--golden", str(golden), "--expected", str(expected), "--results", str(results)]
    return {"model": model, "version": str(version), "dataset": dataset, "backend": backend, "image": image,
            "argv": argv,
            "golden": str(golden), "expected": str(expected), "results": str(results),
            "container": re.sub(r"[^a-zA-Z0-9_.-]", "-", f"mlops-infra-{model}-v{version}-{run_key}").lower()}


def validation_failure(request: dict, code: int | None, output: str, where: str) -> str:
    """Why a validation run failed: its verdict's error (the results file, else the last JSON line
    it printed), else the tail of its output."""
    verdict: dict = {}
    try:
        verdict = json.loads(Path(request["results"]).read_text())
    except (OSError, ValueError):
        lines = [ln for ln in output.splitlines() if ln.strip().startswith("{")]
        try:
            verdict = json.loads(lines[-1]) if lines else {}
        except ValueError:
            pass
    cause = verdict.get("error") or output[-1500:].strip() or "no output"
    return f"infra validation of {request['model']} v{request['version']} failed in {where} (exit {code}): {cause}"


def infra_validate_local(request: dict, s: Settings | None = None) -> dict:
    """The local backend's infra validation: the check runs as its own process from the installed
    package (as the local server would load the model), so a broken artifact fails *there*."""
    s = s or settings()
    public, private = validation_env(s)
    Path(request["results"]).unlink(missing_ok=True)  # a verdict of an earlier try must not be read
    proc = subprocess.run([sys.executable, *request["argv"]], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **public, **private, "MLOPS_INFRA_VALIDATION_IN": "process"},
                          cwd=PROJECT_ROOT)
    print(proc.stdout + proc.stderr)  # the task log shows what the process said
    if proc.returncode != 0:
        raise DeployError(validation_failure(request, proc.returncode, proc.stdout + proc.stderr,
                                             "the server's own process"))
    verdict = json.loads(Path(request["results"]).read_text())
    return {k: v for k, v in verdict.items() if k != "scores"}
