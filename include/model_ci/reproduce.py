"""``--reproduce``: retrain the champion's recipe with the champion's OWN code (its commit, checked
out in a temporary git worktree) and compare every metric its run recorded with the retrain's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from include.model_ci.errors import CiError
from include.model_ci.recipe import Recipe


def compare_metrics(recorded: dict[str, float], again: dict[str, float]) -> dict:
    """Exact comparison of a run's recorded metrics with a retrain's: which differ, by how much."""
    keys = sorted(k for k in recorded if k in again and not k.startswith("search_"))
    differ = [{"metric": k, "recorded": recorded[k], "reproduced": again[k], "delta": again[k] - recorded[k]}
              for k in keys if not (recorded[k] == again[k] or (math.isnan(recorded[k]) and math.isnan(again[k])))]
    return {"ok": not differ, "n_compared": len(keys), "differ": differ}


# Run by train_at_commit in the champion's own checkout, so every import below is that commit's code
# (``from include.training import``: the names every commit's include.training provides).
_TRAIN_AT_COMMIT = """
import json, sys
import include
from include.spec import load_spec
from include.training import select_window, train_and_register
from include.versioning import DataRepo
a = json.loads(sys.argv[1])
spec = load_spec(a["dataset"])
df = select_window(DataRepo().load(a["dataset"], a["data_rev"], spec), spec, a["window_days"])
out = train_and_register(df, spec, lineage=a["lineage"], family=a["family"], params=a["params"], seed=a["seed"],
                         reason="model-ci-reproduce", run_key=a["run_key"], holdout_frac=a["holdout_frac"],
                         val_frac=a["val_frac"])
print("MODEL_CI_RESULT " + json.dumps({"code": include.__file__, "metrics": out["metrics"]}))
"""


def train_at_commit(repo: Path, recipe: Recipe, spec, tmp: Path, *, run_key: str, timeout: float = 1800) -> dict:
    """The metrics of ``recipe`` retrained by the code of commit ``recipe.code_sha`` of ``repo``.

    The commit is checked out in a temporary ``git worktree`` (removed afterwards) and trained in a
    subprocess whose imports come from it, against the stores of this process's environment (the
    scratch MLflow store inside :func:`check`; the data repo and DVC remote as resolved here, since
    the worktree's default state dir would be its own)."""
    from include.config import settings

    sha = recipe.code_sha
    if sha in ("", "unknown"):
        raise CiError("--reproduce: the champion records no code sha, so its own code cannot be retrained")

    def git(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=timeout)

    if git("cat-file", "-e", f"{sha}^{{commit}}").returncode != 0:
        raise CiError(f"--reproduce: the champion's commit {sha[:12]} is not in the git history of {repo} "
                      "(fetch it, e.g. a full clone / fetch-depth: 0)")
    src = tmp / f"src-{sha[:12]}"
    added = git("worktree", "add", "--detach", "--force", str(src), sha, timeout=300)
    if added.returncode != 0:
        raise CiError(f"--reproduce: git worktree add {sha[:12]} failed: {added.stderr.strip()[-1000:]}")
    try:
        s = settings()
        env = {**os.environ, "PYTHONPATH": str(src), "MLOPS_STATE_DIR": str(s.state_dir),
               "MLOPS_DATA_REPO": str(s.data_repo), "MLOPS_DVC_REMOTE": str(s.dvc_remote)}
        args = {"dataset": spec.name, "data_rev": recipe.data_rev, "window_days": recipe.window_days,
                "family": recipe.family, "params": recipe.params, "seed": recipe.seed, "run_key": run_key,
                "holdout_frac": recipe.holdout_frac, "val_frac": recipe.val_frac,
                "lineage": {"data_rev": recipe.data_rev, "data_md5": recipe.data_md5,
                            "validation_id": recipe.validation_id, "dataset": spec.name, "dag_run_id": run_key,
                            "selection_window_days": recipe.window_days or None}}
        proc = subprocess.run([sys.executable, "-c", _TRAIN_AT_COMMIT, json.dumps(args)], cwd=src, env=env,
                              capture_output=True, text=True, timeout=timeout)
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("MODEL_CI_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise CiError(f"--reproduce: the champion's code ({sha[:12]}) failed to train its recipe:\n"
                          f"{proc.stderr.strip()[-3000:]}")
        out = json.loads(line.split(" ", 1)[1])
        if not Path(out["code"]).resolve().is_relative_to(src.resolve()):
            raise CiError(f"--reproduce ran {out['code']}, not the checkout of {sha[:12]} in {src}")
        return out["metrics"]
    finally:
        git("worktree", "remove", "--force", str(src), timeout=300)
        git("worktree", "prune")
