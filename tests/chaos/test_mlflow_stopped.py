"""A real `mlflow server` killed (kill -9) while `train_and_register` runs against it, then restarted
on the same store; the retry under the same run key must leave one complete version.

The server (SQLite backend, local artifact dir, served artifacts) runs as a subprocess on a free
port. The child process trains against it and holds at a named crash point (``MLOPS_HOLD_AT``,
include/crashpoints.py) while the test kills the server, then goes on into the dead server. It must
fail on its own, soon, naming the unreachable store (include/tracking.py bounds MLflow's HTTP
retries), so Airflow's task retry can take over. Invariants after the restart and one retry
(docs/reliability.md): no READY version whose run is not FINISHED, exactly one version under the
run key, READY, its run FINISHED with ``registered_version`` and the lineage tags, no other live
run under the key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.config import PROJECT_ROOT
from include.crashpoints import HOLD_DIR_ENV, HOLD_ENV
from include.demo_data import make_batch
from include.spec import load_spec
from tests.chaos.test_train_crash import CHILD, LINEAGE, _half_registered, _registry
from tests.services import free_port, wait_http

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

VENV_BIN = Path(sys.executable).parent


class MlflowServer:
    """`mlflow server` on a store that outlives the process: kill -9 it, start it again."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/health", timeout=180, proc=self.proc)

    def kill(self) -> None:
        """kill -9 of the server and its workers (its own process group)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_server(state, tmp_path, monkeypatch):
    root = tmp_path / "mlflow-server"
    root.mkdir()
    server = MlflowServer(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", server.url)
    monkeypatch.delenv("MLOPS_MLFLOW_ARTIFACT_ROOT")  # the server's own (proxied) artifact store
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited {proc.returncode} before reaching the hold:\n"
                                 f"{proc.stderr.read()[-4000:]}")
        assert time.time() < deadline, f"the child did not reach {path.name} in {timeout}s"
        time.sleep(0.1)


# where the server dies: while the run is RUNNING with its model logged (before: the version was
# registered inside the run, so this left a READY version with a RUNNING run); after the commit
# point (run FINISHED, no version yet: registration retries, then gives up). `train.after_register`
# passes too (docs/reliability.md); left out to keep the suite short, test_train_crash covers it.
POINTS = ["train.after_log_model", "train.after_finish"]


@pytest.mark.parametrize("point", POINTS)
def test_mlflow_killed_mid_training_then_retry_leaves_one_complete_version(mlflow_server, tmp_path, point):
    from include.tracking import HTTP_DEFAULTS
    from include.training.model_io import load_model
    from include.training.train import train_and_register

    run_key = f"rk-mlflow-down-{point.split('.')[1]}"
    holds = tmp_path / "holds"
    holds.mkdir()
    env = {**os.environ, HOLD_ENV: point, HOLD_DIR_ENV: str(holds)}
    for k in HTTP_DEFAULTS:  # the child runs with the shipped bounds, not whatever the test env says
        env.pop(k, None)
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(LINEAGE), run_key], cwd=PROJECT_ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(holds / f"{point}.held", child)
        mlflow_server.kill()
        t_kill = time.perf_counter()
        (holds / f"{point}.go").touch()
        _, err = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            child.kill()
    fail_s = time.perf_counter() - t_kill
    # the task fails by itself, soon, and says why: Airflow's retry takes it from there
    assert child.returncode not in (0, 137), err[-3000:]
    assert "TrackingUnavailable" in err and f"MLflow at {mlflow_server.url} is unreachable" in err, err[-3000:]

    mlflow_server.start()  # same store, same port
    c, name, _, _ = _registry(run_key)
    assert _half_registered(c, name) == [], f"{point}: a half-registered version after the outage"

    t0 = time.perf_counter()
    res = train_and_register(make_batch(0, 2000, seed=11), load_spec("sessions"), lineage=LINEAGE,
                             family="logreg", run_key=run_key)
    recover_s = time.perf_counter() - t0

    c, name, versions, runs = _registry(run_key)
    assert [str(v.version) for v in versions] == [res["version"]], f"{point}: {[v.version for v in versions]}"
    (mv,) = versions
    run = c.get_run(mv.run_id)
    assert mv.status == "READY" and run.info.status == "FINISHED", (point, mv.status, run.info.status)
    assert [r.info.run_id for r in runs] == [mv.run_id], f"{point}: other live runs carry the run key"
    assert {k: mv.tags.get(k) for k in LINEAGE} == LINEAGE and mv.tags["run_key"] == run_key
    assert run.data.tags.get("registered_version") == str(mv.version)
    assert _half_registered(c, name) == []
    load_model(name, mv.version)
    print(f"\nCHAOS mlflow killed at {point}: the task failed {fail_s:.1f}s after the kill "
          f"(TrackingUnavailable); after the restart the retry took {recover_s:.1f}s "
          f"({'reused the finished run' if res['reused'] else 'retrained'}); versions 1, half-registered 0")
