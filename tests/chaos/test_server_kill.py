"""kill -9 of the serving model server under load: it comes back by itself, champion unchanged.

Local backend (the embedded mode): the server runs under include/serving/supervise.py, which
restarts it on the same port. Before, every request after the kill failed for as long as anyone
watched (60+ s) and nothing restarted the server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.integration.test_deploy import Load, _champion, _deploy, _row, _train
from tests.services import SESSIONS_MODEL, serving_env

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def _server_pid(supervisor_pid: int) -> int:
    out = subprocess.run(["pgrep", "-P", str(supervisor_pid)], capture_output=True, text=True).stdout.split()
    assert out, f"the supervisor {supervisor_pid} runs no server"
    return int(out[0])


def test_killed_local_server_is_restarted_and_keeps_serving(airflow_db, state, monkeypatch):
    from include.deployment import gateway_route, stop_all

    s = serving_env(monkeypatch, state, "local")
    try:
        v1 = _train(0, 1500)
        dr, states = _deploy(v1)
        assert str(dr.state) == "success", states
        instance = gateway_route(SESSIONS_MODEL, s)[0]
        victim = _server_pid(int(instance["id"]))

        load = Load(s.gateway_url, workers=2)
        load.start()
        time.sleep(1.0)
        ok_before = load.ok
        killed_at = time.time()
        os.kill(victim, signal.SIGKILL)
        deadline, recovered_at = killed_at + 90, None
        while time.time() < deadline:
            try:
                r = httpx.post(f"{s.gateway_url}/predict", json={"instances": [_row()]}, timeout=5)
                if r.status_code == 200:
                    recovered_at = time.time()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert recovered_at is not None, f"no answer within 90 s of the kill; last errors {load.errors[-3:]}"
        failed_by_recovery = load.failed
        time.sleep(2.0)
        load.stop()
        print(f"\nserver kill -9: outage {recovered_at - killed_at:.2f}s, {failed_by_recovery} failed of "
              f"{load.ok + load.failed} requests ({ok_before} before the kill)")
        assert load.failed == failed_by_recovery, f"requests failed after recovery: {load.errors[-3:]}"
        assert _server_pid(int(instance["id"])) != victim  # a new process, same supervisor and port
        assert gateway_route(SESSIONS_MODEL, s)[0]["url"] == instance["url"]
        assert _champion() == v1 and load.versions == {v1}
    finally:
        stop_all()
