"""DAG integrity: every DAG file parses cleanly, follows the project's rules and stays cheap to parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pendulum
import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
# boto3 is not listed: Airflow itself imports it when an Asset-scheduled DAG makes the providers
# manager load every provider's asset URI handlers (the amazon provider's S3 handler), whatever the DAG.
HEAVY = ("pandas", "numpy", "sklearn", "mlflow", "great_expectations", "evidently", "dvc", "docker", "scipy")
# deploy's infra validation is a DockerOperator, whose module imports docker-py (~45 ms measured):
# an operator has to exist when the DAG is parsed, so that import is the price of using it
ALLOWED_HEAVY = {"deploy.py": {"docker"}}
EXPECTED_DAGS = {"ingest", "train", "deploy", "monitor_drift", "batch_score"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_every_dag_file_declares_one_dag_named_after_it(dagbag):
    """A file whose DAG function is never called (or that declares two) parses without an error."""
    by_file: dict[str, list[str]] = {}
    for dag_id, dag in dagbag.dags.items():
        by_file.setdefault(Path(dag.fileloc).stem, []).append(dag_id)
    assert by_file == {p.stem: [p.stem] for p in DAG_FILES}


def test_no_task_pushes_its_dict_keys_as_separate_xcoms(dagbag):
    """TaskFlow infers multiple_outputs=True from a `-> dict` annotation: every key would be pushed
    again as its own XCom. No task here means that; each says multiple_outputs=False."""
    inferred = [f"{dag_id}.{t.task_id}" for dag_id, dag in dagbag.dags.items() for t in dag.tasks
                if getattr(t, "multiple_outputs", False)]
    assert inferred == []


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, "\n".join(f"{k}: {v}" for k, v in dagbag.import_errors.items())


def test_expected_dags_present(dagbag):
    assert EXPECTED_DAGS <= set(dagbag.dag_ids), f"missing: {EXPECTED_DAGS - set(dagbag.dag_ids)}"


def test_every_dag_follows_the_rules(dagbag):
    problems = []
    for dag_id, dag in dagbag.dags.items():
        if not dag.tags:
            problems.append(f"{dag_id}: no tags")
        if not dag.doc_md or len(dag.doc_md.strip()) < 40:
            problems.append(f"{dag_id}: doc_md missing or too short")
        if dag.catchup:
            problems.append(f"{dag_id}: catchup must be False")
        start = dag.start_date
        if start is None or abs((pendulum.now("UTC") - start).total_seconds()) < 3600:
            problems.append(f"{dag_id}: start_date must be fixed, got {start}")
        for t in dag.tasks:
            if (t.retries or 0) < 2:
                problems.append(f"{dag_id}.{t.task_id}: retries={t.retries} < 2")
            if not t.owner or t.owner == "airflow":
                problems.append(f"{dag_id}.{t.task_id}: owner not set")
        for name in dag.params:
            param = dag.params.get_param(name)
            if not param.schema.get("type") or not param.schema.get("title") or not param.description:
                problems.append(f"{dag_id}: Param {name!r} needs type, title and description for the UI form")
    assert not problems, "\n".join(problems)


PROBE = r"""
import importlib.util, json, sys
import sqlalchemy.engine

def forbid(what):
    def _raise(*a, **k):
        raise RuntimeError(f"{what} at parse time")
    return _raise

sqlalchemy.engine.Engine.connect = forbid("metadata DB query")
from airflow.sdk import Connection, Variable
Variable.get = forbid("Variable.get")
Connection.get = forbid("Connection.get")
path = sys.argv[1]
spec = importlib.util.spec_from_file_location("dagfile", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({"heavy": heavy}))
"""


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parse_is_light_and_offline(path):
    """Parsing must not import heavy libraries nor touch the metadata DB, Variables or Connections."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), ",".join(HEAVY)],
        capture_output=True, text=True, env=os.environ.copy(), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    heavy = sorted(set(json.loads(proc.stdout.strip().splitlines()[-1])["heavy"]) - ALLOWED_HEAVY.get(path.name, set()))
    assert heavy == [], f"{path.name} imports {heavy} at parse time; import them inside tasks"


def test_deploy_validates_in_docker_with_the_docker_operator(dagbag):
    """In the Docker backend the infra validation is the provider's DockerOperator; it and the local
    check both follow prepare_infra_validation, and switch_traffic runs after whichever ran."""
    from airflow.providers.docker.operators.docker import DockerOperator

    dag = dagbag.dags["deploy"]
    docker_task = dag.get_task("release.infra_validate_docker")
    assert isinstance(docker_task, DockerOperator)
    assert docker_task.auto_remove == "force" and not docker_task.mount_tmp_dir
    assert "private_environment" not in docker_task.template_fields and docker_task.environment
    assert not {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"} & set(docker_task.environment)
    checks = {"release.infra_validate_docker", "release.infra_validate_local"}
    assert checks <= dag.get_task("release.prepare_infra_validation").downstream_task_ids
    switch = dag.get_task("release.switch_traffic")
    assert checks <= switch.upstream_task_ids and switch.trigger_rule == "none_failed_min_one_success"


def test_only_airflow_sdk_imports():
    bad = []
    for path in DAG_FILES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            s = line.strip()
            if s.startswith(("from airflow", "import airflow")) and not s.startswith(
                ("from airflow.sdk", "from airflow.providers")
            ):
                bad.append(f"{path.name}:{n}: {s}")
    assert not bad, "use `from airflow.sdk import ...`:\n" + "\n".join(bad)
