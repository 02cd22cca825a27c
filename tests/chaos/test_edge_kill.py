"""kill -9 of the serving edge (Caddy) under load: its supervisor brings it back with the routes it
had (the config last loaded through the admin API), so serving resumes without a deploy."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx
import pytest

from tests.integration.test_edge import _up, edge  # noqa: F401 - the fixture is used by name

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_killed_edge_comes_back_with_its_routes(edge):  # noqa: F811
    import json

    from include.config import settings
    from include.edge import _proc_file

    url, servers = edge
    _up(servers, "clf", "1")
    _up(servers, "reg", "2")
    supervisor = int(json.loads(_proc_file(settings()).read_text())["pid"])
    caddy = int(subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True).stdout.split()[0])

    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def load():
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    code = c.post(f"{url}/models/reg/predict").status_code
                except httpx.HTTPError:
                    code = 0
                results.append((time.time(), code))
                time.sleep(0.005)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    time.sleep(0.5)
    killed_at = time.time()
    os.kill(caddy, signal.SIGKILL)
    deadline = killed_at + 30
    while time.time() < deadline and not [r for r in results if r[0] > killed_at and r[1] == 200]:
        time.sleep(0.05)
    time.sleep(1.0)
    stop.set()
    t.join(timeout=10)
    after = [r for r in results if r[0] > killed_at]
    ok = [r for r in after if r[1] == 200]
    assert ok, f"the edge did not come back within 30 s: {after[-5:]}"
    failed = [r for r in after if r[1] != 200 and r[0] < ok[0][0]]
    print(f"\nedge kill -9: outage {ok[0][0] - killed_at:.2f}s, {len(failed)} failed requests, "
          f"{len([r for r in results if r[1] != 200])} failed of {len(results)} in all")
    assert all(code == 200 for ts, code in after if ts > ok[0][0]), "failures after the edge came back"
    # the routes survived: both models, each on its own path
    assert httpx.post(f"{url}/models/clf/predict").json()["model_name"] == "clf"
    assert httpx.post(f"{url}/models/reg/predict").json()["model_version"] == "2"
