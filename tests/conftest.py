"""Test environment: every test session gets its own state dir, so tests never touch ./state.

Airflow reads AIRFLOW_HOME and its DB URI when first imported, so they are set here, before any
test module imports airflow. Per-test state (MLflow store, DVC repo and remote, landing,
quarantine) comes from the ``state`` fixture.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlops-tests-"))
os.environ["MLOPS_STATE_DIR"] = str(_SESSION_DIR)
os.environ.pop("AIRFLOW_HOME", None)
os.environ.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)

from include.config import airflow_env, settings  # noqa: E402
from tests.services import free_port, wait_http  # noqa: E402

os.environ.update(airflow_env())
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("GIT_AUTHOR_NAME", "mlops-tests")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "mlops-tests@localhost")
os.environ.setdefault("GIT_COMMITTER_NAME", "mlops-tests")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "mlops-tests@localhost")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# deploys in tests have no live traffic: a short canary (promoted on what it saw) and rollback
# window instead of the policies' minutes; the canary tests set their own
os.environ.setdefault("MLOPS_DEPLOY_POLICY", '{"canary": {"min_seconds": 0, "max_seconds": 2}, '
                                             '"rollback_window": {"seconds": 2}}')
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def airflow_db():
    """A migrated Airflow metadata DB (SQLite) for dag.test() runs; made once per session."""
    import subprocess
    import sys

    s = settings()
    s.airflow_home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True, capture_output=True, env=os.environ.copy(),
    )
    return s


@pytest.fixture
def state(tmp_path, monkeypatch):
    """Fresh per-test MLflow store, DVC data repo + local remote, landing and quarantine dirs."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.setenv("MLOPS_DATA_REPO", str(tmp_path / "data-repo"))
    monkeypatch.setenv("MLOPS_DVC_REMOTE", str(tmp_path / "dvc-remote"))
    monkeypatch.setenv("MLOPS_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("MLOPS_QUARANTINE_DIR", str(tmp_path / "quarantine"))
    monkeypatch.setenv("MLOPS_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("MLOPS_PREDICTIONS_DIR", str(tmp_path / "predictions"))
    (tmp_path / "landing").mkdir()
    return settings()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API on a real localhost port (no real S3 server is installable here)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A fresh bucket on the S3 endpoint; AWS env points every client (boto3, DVC) at it."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("MLOPS_S3_ENDPOINT", s3_server)
    name = "mlops-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


# ------------------------------------------------------------------ the MLOps page's live stack
# One live Airflow with a short real loop on it (tests/integration/mlops_loop.py) serves both the
# page's API tests (tests/integration/test_mlops_plugin.py) and its browser test (tests/ui/): it is
# started once, those tests run back to back, and it stops after the last of them, not at the end
# of the session (a live Airflow would slow every test after it on a small CI machine).
MLOPS_LOOP_FIXTURE = "mlops_loop"
_mlops_loop: dict = {}


@pytest.fixture(scope="session")
def mlops_loop(tmp_path_factory):
    """(live, facts): the live stack and what its loop recorded (see mlops_loop.run_short_loop)."""
    from contextlib import ExitStack

    from tests.integration.mlops_loop import loop_stack

    if "value" not in _mlops_loop:
        stack = ExitStack()
        _mlops_loop["stack"] = stack
        _mlops_loop["value"] = stack.enter_context(loop_stack(tmp_path_factory.mktemp("mlops-loop")))
    yield _mlops_loop["value"]
    _close_mlops_loop()


def _close_mlops_loop() -> None:
    stack = _mlops_loop.pop("stack", None)
    if stack is not None:
        stack.close()


# `make test` runs on two pytest-xdist workers (`-n 2 --dist loadscope --no-loadscope-reorder`):
# most of the suite's time is spent waiting on live services, not computing. What must stay on one
# worker is a test module (its module fixtures start servers once) and every module using the
# `mlops_loop` stack; units go out in collection order, which puts the slowest layers first, so no
# live-stack module starts last while the other worker idles.
_SLOWEST_FIRST = ("e2e", "ui", "chaos", "slow")


def _layer_rank(item) -> int:
    return next((rank for rank, mark in enumerate(_SLOWEST_FIRST) if item.get_closest_marker(mark)),
                len(_SLOWEST_FIRST))


@functools.cache
def _uses_mlops_loop(module: str) -> bool:
    path = Path(__file__).resolve().parent.parent / module
    return path.is_file() and re.search(rf"\b{MLOPS_LOOP_FIXTURE}\b", path.read_text()) is not None


def _unit(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return MLOPS_LOOP_FIXTURE if _uses_mlops_loop(module) else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    # xdist's own `loadgroup` cannot be used: it renames node ids through `item._nodeid`, which
    # pytest 9 no longer reads, so every test became its own unit (seen: one module's live stack
    # started on both workers). This is `loadscope` with our units instead.
    from xdist.scheduler import LoadScopeScheduling

    class ModuleUnits(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ModuleUnits(config, log) if config.getoption("dist") == "loadscope" else None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    members: dict[str, list] = {}
    for item in items:
        members.setdefault(_unit(item.nodeid), []).append(item)
    ranked = sorted(members.values(), key=lambda group: min(_layer_rank(i) for i in group))  # stable
    items[:] = [item for group in ranked for item in group]
    if MLOPS_LOOP_FIXTURE in members:
        _mlops_loop["last"] = members[MLOPS_LOOP_FIXTURE][-1]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if item is _mlops_loop.get("last"):
        _close_mlops_loop()


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' promtool (tools/debian_tools.sh installs it; CI fails without it)."""
    import shutil

    from tests.services import unavailable

    path = shutil.which("promtool")
    if not path:
        unavailable("promtool is not installed (tools/debian_tools.sh)")
    return path
