"""e2e fixtures: a live Airflow in both modes (see tests/e2e/live.py)."""

from __future__ import annotations

import pytest

from tests.e2e.live import live_stack


def _no_cooldown(state):
    """The shipped policies without the drift cooldown: the live test retrains right after deploying.
    (Storm protection is tested in tests/e2e/test_closed_loop.py and the drift tests.)"""
    import shutil

    import yaml

    from include.config import PROJECT_ROOT

    target = state / "policies"
    shutil.copytree(PROJECT_ROOT / "include" / "policies", target)
    drift = yaml.safe_load((target / "drift_sessions.yaml").read_text())
    drift["cooldown_hours"] = 0
    (target / "drift_sessions.yaml").write_text(yaml.safe_dump(drift))
    return target


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def live_airflow(request, tmp_path_factory):
    mode = request.param
    s3_url = request.getfixturevalue("s3_server") if mode == "distributed" else None
    state = tmp_path_factory.mktemp(f"live-{mode}")
    with live_stack(mode, state, s3_url=s3_url, extra_env={"MLOPS_POLICIES_DIR": str(_no_cooldown(state))}) as live:
        yield live
