"""`mlops-ci check` against a real MLflow registry (SQLite, `state` fixture) and a real DVC data repo:
a code change is trained on the champion's exact data rev and seed in a throw-away store and gated
against the champion with the promotion gate's checks (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest

from include import model_ci
from include.demo_data import make_batch
from include.spec import load_spec
from tests.services import SESSIONS_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# a weak champion: five boosting rounds of stumps
WEAK = {"max_iter": 5, "max_leaf_nodes": 2}


@pytest.fixture
def sessions_rev(state):
    """The sessions dataset in a real DVC data repo: days 0-2, 3,000 rows each (one revision)."""
    from include.versioning import DataRepo

    repo = DataRepo()
    v = None
    for day in range(3):
        v = repo.commit_batch("sessions", make_batch(day, 3000), batch_md5=f"md5-sessions-{day}",
                              batch_name=f"day-{day}", validation_id=f"val-{day}")
    return v


def _champion(spec, v, *, params=None, run_key: str) -> str:
    """What train + deploy leave behind: a version trained on the rev, crowned champion."""
    from include.tracking import client
    from include.training import train_and_register
    from include.versioning import DataRepo

    lineage = {"data_rev": v.dvc_rev, "data_md5": v.md5, "validation_id": v.validation_id, "dataset": "sessions",
               "dag_run_id": run_key}
    out = train_and_register(DataRepo().load("sessions", v.dvc_rev, spec), spec, lineage=lineage, family="hgb",
                             params=params, run_key=run_key)
    client().set_registered_model_alias(SESSIONS_MODEL, "champion", out["version"])
    return out["version"]


def _real_state(state) -> dict:
    """Everything mlops-ci must leave alone: versions with tags, aliases, model tags, runs, audit."""
    from include.tracking import client, configure_mlflow

    exp = configure_mlflow()
    c = client()
    rm = c.get_registered_model(SESSIONS_MODEL)
    audit = state.reports_dir / "audit.jsonl"
    return {
        "versions": {v.version: dict(v.tags) for v in c.search_model_versions(f"name='{SESSIONS_MODEL}'")},
        "aliases": dict(rm.aliases), "model_tags": dict(rm.tags),
        "runs": sorted(r.info.run_id for r in c.search_runs([exp])),
        "audit": audit.read_text() if audit.exists() else None,
    }


def _run(tmp_path, name: str, *args: str) -> tuple[int, str]:
    report = tmp_path / f"{name}.md"
    code = model_ci.main(["check", "--dataset", "sessions", "--report", str(report), *args])
    return code, report.read_text()


def test_model_ci_identical_better_and_slice_breaking_changes(state, sessions_rev, tmp_path, monkeypatch):
    spec = load_spec("sessions")
    good = _champion(spec, sessions_rev, run_key="champion-default")
    before = _real_state(state)

    # 1. the working tree trains exactly what the champion is: identical behaviour, and --reproduce
    #    finds every recorded metric again
    code, report = _run(tmp_path, "identical", "--reproduce")
    assert code == 0, report
    assert "NO SIGNIFICANT CHANGE" in report and "identical scores on all 1800 unseen holdout rows" in report
    assert "reproduced all" in report and "non-determinism" not in report
    assert f"`{SESSIONS_MODEL}` v{good}" in report and sessions_rev.dvc_rev[:10] in report
    assert "| roc_auc |" in report and "| device=mobile |" in report
    assert "## What changed" in report
    assert "(same commit)" in report or "+ uncommitted changes" in report
    assert "the champion recorded the model's own pins only" in report and "| scikit-learn |" in report
    assert _real_state(state) == before

    # 2. a change that corrupts one slice (mobile labels shuffled before the fit: a bad join, say)
    #    is rejected, and the report names the slice
    import include.training as training

    fit = training._fit

    def broken_fit(spec, family, hp, seed, train):
        train = train.copy()
        mobile = (train["device"] == "mobile").to_numpy()
        train.loc[mobile, spec.target] = np.random.default_rng(0).permutation(train.loc[mobile, spec.target].to_numpy())
        return fit(spec, family, hp, seed, train)

    monkeypatch.setattr(training, "_fit", broken_fit)
    code, report = _run(tmp_path, "broken")
    monkeypatch.setattr(training, "_fit", fit)
    assert code == 1, report
    assert "**REJECTED**" in report
    assert "| device=mobile |" in report and "roc_auc on device=mobile dropped by" in report
    row = next(ln for ln in report.splitlines() if ln.startswith("| device=mobile |"))
    assert row.endswith("**FAIL** |")
    assert _real_state(state) == before

    # 3. a weak champion; the change brings back better hyperparameters: passed, with the gain and
    #    its interval shown
    weak = _champion(spec, sessions_rev, params=WEAK, run_key="champion-weak")
    before = _real_state(state)
    code, report = _run(tmp_path, "better", "--param", "max_iter=200", "--param", "max_leaf_nodes=8")
    assert code == 0, report
    assert "**PASSED**" in report and f"v{weak}" in report
    assert "roc_auc improves by +" in report and "one-sided 95% bounds [+" in report
    row = next(ln for ln in report.splitlines() if ln.startswith("| roc_auc |"))
    assert row.endswith("▲ |")
    assert _real_state(state) == before
    print(report)  # the README's sample comes from this run


def test_model_ci_reports_non_determinism_and_setup_errors(state, sessions_rev, tmp_path, monkeypatch, capsys):
    spec = load_spec("sessions")
    # no champion yet: nothing to compare with, a setup error (exit 2), not a verdict
    assert model_ci.main(["check", "--dataset", "sessions"]) == 2
    assert "has no 'champion' alias" in capsys.readouterr().err

    _champion(spec, sessions_rev, run_key="champion-default")
    before = _real_state(state)
    # a fit whose result depends on something outside the recipe: the recorded metrics come out different
    import include.training as training

    fit = training._fit
    monkeypatch.setattr(training, "_fit", lambda spec, family, hp, seed, train: fit(
        spec, family, {**hp, "learning_rate": hp["learning_rate"] * 1.01}, seed, train))
    code, report = _run(tmp_path, "nondet", "--reproduce")
    assert code == 1, report
    assert "**non-determinism**" in report and "| test_roc_auc |" in report
    assert _real_state(state) == before


def test_compare_metrics_is_exact():
    same = model_ci.compare_metrics({"a": 0.5, "b": float("nan")}, {"a": 0.5, "b": float("nan"), "c": 1.0})
    assert same == {"ok": True, "n_compared": 2, "differ": []}
    diff = model_ci.compare_metrics({"a": 0.5}, {"a": 0.5 + 1e-12})
    assert not diff["ok"] and diff["differ"][0]["metric"] == "a"


def test_recipe_params_round_trip():
    assert model_ci._param_value("0.05") == 0.05 and model_ci._param_value("None") is None
    assert model_ci._param_value("False") is False and model_ci._param_value("auto") == "auto"
