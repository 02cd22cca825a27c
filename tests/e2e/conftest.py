"""e2e fixtures: a live Airflow in both modes (see tests/e2e/live.py)."""

from __future__ import annotations

import pytest

from include.monitoring import policies_overlay
from tests.e2e.live import live_stack


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def live_airflow(request, tmp_path_factory):
    mode = request.param
    s3_url = request.getfixturevalue("s3_server") if mode == "distributed" else None
    state = tmp_path_factory.mktemp(f"live-{mode}")
    # the live test retrains right after deploying: no drift cooldown here (storm protection is
    # tested in tests/e2e/test_closed_loop.py and the drift tests)
    no_cooldown = policies_overlay(state / "policies", cooldown_hours=0)
    with live_stack(mode, state, s3_url=s3_url, extra_env={"MLOPS_POLICIES_DIR": str(no_cooldown)}) as live:
        yield live
