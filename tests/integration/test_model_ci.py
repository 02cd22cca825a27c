"""`mlops-ci check` against a real MLflow registry (SQLite, `state` fixture) and a real DVC data repo:
a code change is trained on the champion's exact data rev and seed in a throw-away store and gated
against the champion with the promotion gate's checks (issue 19)."""

from __future__ import annotations

import os

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
    from include.training.train import train_and_register
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
    #    (the champion's own commit, checked out in a git worktree) finds every recorded metric again
    code, report = _run(tmp_path, "identical", "--reproduce")
    assert code == 0, report
    assert "NO SIGNIFICANT CHANGE" in report and "identical scores on all 1800 unseen holdout rows" in report
    sha = client_tags(good)["code_sha"]
    assert f"the champion's own code (`{sha[:12]}`, a temporary git worktree) reproduced all" in report
    assert "non-determinism" not in report
    assert f"`{SESSIONS_MODEL}` v{good}" in report and sessions_rev.dvc_rev[:10] in report
    assert "| roc_auc |" in report and "| device=mobile |" in report
    assert "## What changed" in report
    assert "(same commit)" in report or "+ uncommitted changes" in report
    assert "vs the lock the champion's run logged (" in report and "no locked package changed" in report
    assert "| scikit-learn |" in report  # the model's own pins
    assert _real_state(state) == before

    # 2. a change that corrupts one slice (mobile labels shuffled before the fit: a bad join, say)
    #    is rejected, and the report names the slice
    import include.training.train as training

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
    # ... with a dependency bump in the working tree's lock: the report lists exactly what moved
    from include.config import PROJECT_ROOT

    lock = PROJECT_ROOT.joinpath("constraints.txt").read_text().splitlines()
    sk = next(i for i, ln in enumerate(lock) if ln.startswith("scikit-learn=="))
    old_sk = lock[sk].split("==")[1]
    lock[sk] = "scikit-learn==9.9.9"
    gone = next(ln for ln in lock if ln.startswith("pyarrow=="))
    bumped = tmp_path / "constraints.txt"
    bumped.write_text("\n".join([ln for ln in lock if ln != gone] + ["newpkg==1.0"]) + "\n")
    code, report = _run(tmp_path, "better", "--param", "max_iter=200", "--param", "max_leaf_nodes=8",
                        "--lock", str(bumped))
    assert code == 0, report
    assert "**PASSED**" in report and f"v{weak}" in report
    assert "3 package(s) changed" in report
    assert f"| scikit-learn | {old_sk} | 9.9.9 |" in report
    assert f"| pyarrow | {gone.split('==')[1]} | (removed) |" in report and "| newpkg | (absent) | 1.0 |" in report
    assert "roc_auc improves by +" in report and "one-sided 95% bounds [+" in report
    row = next(ln for ln in report.splitlines() if ln.startswith("| roc_auc |"))
    assert row.endswith("▲ |")
    assert _real_state(state) == before
    print(report)  # the README's sample comes from this run


def client_tags(version: str) -> dict:
    from include.tracking import client

    return dict(client().get_model_version(SESSIONS_MODEL, version).tags)


# trains the sessions champion with the code of the checkout it runs in (cwd) on the real stores
_TRAIN_HERE = """
import json, sys
from include.spec import load_spec
from include.training.train import train_and_register
from include.versioning import DataRepo
rev = sys.argv[1]
spec = load_spec("sessions")
lineage = {"data_rev": rev, "data_md5": "m", "validation_id": "v", "dataset": "sessions", "dag_run_id": "unseeded"}
print(train_and_register(DataRepo().load("sessions", rev, spec), spec, lineage=lineage, run_key="unseeded")["version"])
"""


def test_model_ci_reports_non_determinism_of_the_champions_own_commit(state, sessions_rev, tmp_path, capsys):
    import subprocess
    import sys

    from include.config import PROJECT_ROOT
    from include.tracking import client

    # no champion yet: nothing to compare with, a setup error (exit 2), not a verdict
    assert model_ci.main(["check", "--dataset", "sessions"]) == 2
    assert "has no 'champion' alias" in capsys.readouterr().err

    # a commit whose training subsamples its rows without passing the seed: the same recipe gives
    # another model each time. The champion is trained by that commit's code (a clone of this repo).
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(PROJECT_ROOT), str(repo)], check=True)
    training = repo / "include" / "training" / "train.py"
    src = training.read_text()
    fit = "def _fit(spec, family, hp, seed, train):\n"
    assert src.count(fit) == 1
    training.write_text(src.replace(fit, fit + "    train = train.sample(frac=0.8)  # no random_state\n"))
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-am", "subsample the training rows"], check=True)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                         text=True).stdout.strip()
    out = subprocess.run([sys.executable, "-c", _TRAIN_HERE, sessions_rev.dvc_rev], cwd=repo, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr[-3000:]
    version = out.stdout.strip().splitlines()[-1]
    assert client_tags(version)["code_sha"] == sha
    client().set_registered_model_alias(SESSIONS_MODEL, "champion", version)
    before = _real_state(state)

    code, report = _run(tmp_path, "nondet", "--reproduce", "--repo", str(repo))
    assert code == 1, report
    assert f"**non-determinism**: retraining the champion's recipe with the champion's own code (`{sha[:12]}`" in report
    assert "recorded metrics differ, the largest: " in report and "| test_roc_auc |" in report
    assert _real_state(state) == before
    assert subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True,
                          text=True).stdout.count("\n") == 1  # the temporary worktree is gone

    # a commit that is not in the repository's history cannot be reproduced: a setup error
    assert model_ci.main(["check", "--dataset", "sessions", "--reproduce"]) == 2
    assert f"commit {sha[:12]} is not in the git history of" in capsys.readouterr().err


def test_compare_metrics_is_exact():
    same = model_ci.compare_metrics({"a": 0.5, "b": float("nan")}, {"a": 0.5, "b": float("nan"), "c": 1.0})
    assert same == {"ok": True, "n_compared": 2, "differ": []}
    diff = model_ci.compare_metrics({"a": 0.5}, {"a": 0.5 + 1e-12})
    assert not diff["ok"] and diff["differ"][0]["metric"] == "a"


def test_recipe_params_round_trip():
    assert model_ci.param_value("0.05") == 0.05 and model_ci.param_value("None") is None
    assert model_ci.param_value("False") is False and model_ci.param_value("auto") == "auto"
