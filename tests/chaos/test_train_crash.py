"""kill -9 of `train_and_register` at each named crash point, then the retry under the same run key.

The fit, the MLflow run and the registration run for real (SQLite store, local artifacts) in a
child process that ``MLOPS_CRASH_AT`` kills with ``os._exit``; the retry runs in this process.
Invariants (docs/reliability.md): right after the crash no READY version has a run that is not
FINISHED (the gate never sees a half-registered version); after the retry exactly one version
carries the run key, READY, its run FINISHED with the model and the lineage tags, and no other
live run carries the key.
"""

from __future__ import annotations

import json
import time

import pytest

from include.demo_data import make_batch
from include.spec import load_spec
from tests.chaos._crash import run_until_crash

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

LINEAGE = {"data_rev": "0123456789abcdef", "data_md5": "md5-aaa", "validation_id": "val-1",
           "dataset": "sessions", "dag_run_id": "manual__2026-01-01T00:00:00+00:00"}
CHILD = (
    "import json, sys\n"
    "from include.demo_data import make_batch\n"
    "from include.spec import load_spec\n"
    "from include.training import train_and_register\n"
    "train_and_register(make_batch(0, 2000, seed=11), load_spec('sessions'), lineage=json.loads(sys.argv[1]),\n"
    "                   family='logreg', run_key=sys.argv[2])\n"
)


def _registry(run_key: str):
    from include.tracking import client, configure_mlflow

    exp = configure_mlflow()
    c = client()
    name = load_spec("sessions").model_name
    versions = c.search_model_versions(f"name='{name}' and tags.run_key='{run_key}'")
    runs = c.search_runs([exp], f"tags.run_key = '{run_key}'")
    return c, name, versions, runs


def _half_registered(c, name: str) -> list[str]:
    """Versions the gate could pick up whose run is not FINISHED."""
    bad = []
    for mv in c.search_model_versions(f"name='{name}'"):
        status = c.get_run(mv.run_id).info.status if mv.run_id else "no run"
        if mv.status == "READY" and status != "FINISHED":
            bad.append(f"v{mv.version} (run {status})")
    return bad


CASES = {
    "after_log_model": ["train.after_log_model"],
    "after_finish": ["train.after_finish"],
    "after_register": ["train.after_register"],
    "retry_dies_too": ["train.after_log_model", "train.after_finish"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_crash_then_retry_registers_exactly_one_complete_version(state, case):
    from include.training.model_io import load_model
    from include.training.train import train_and_register

    run_key = f"rk-chaos-{case}"
    for point in CASES[case]:
        run_until_crash(CHILD, point, json.dumps(LINEAGE), run_key)
        c, name, _, _ = _registry(run_key)
        assert _half_registered(c, name) == [], f"{case}: a half-registered version is visible after the crash"

    t0 = time.perf_counter()
    res = train_and_register(make_batch(0, 2000, seed=11), load_spec("sessions"), lineage=LINEAGE,
                             family="logreg", run_key=run_key)
    recover_s = time.perf_counter() - t0

    c, name, versions, runs = _registry(run_key)
    assert [v.version for v in versions] == [int(res["version"])], f"{case}: versions {[v.version for v in versions]}"
    (mv,) = versions
    run = c.get_run(mv.run_id)
    assert mv.status == "READY" and run.info.status == "FINISHED", (case, mv.status, run.info.status)
    assert [r.info.run_id for r in runs] == [mv.run_id], f"{case}: other live runs carry the run key"
    assert {k: mv.tags.get(k) for k in LINEAGE} == LINEAGE and mv.tags["run_key"] == run_key
    assert run.data.tags.get("registered_version") == str(mv.version)
    assert _half_registered(c, name) == []
    load_model(name, mv.version)  # the registered model is complete and loads

    again = train_and_register(make_batch(0, 2000, seed=11), load_spec("sessions"), lineage=LINEAGE,
                               family="logreg", run_key=run_key)
    assert again["reused"] and again["version"] == res["version"]
    assert len(_registry(run_key)[2]) == 1
    print(f"\nCHAOS train {case}: versions 1, half-registered 0, retry took {recover_s:.2f}s "
          f"({'reused the finished run' if res['reused'] else 'retrained'})")
