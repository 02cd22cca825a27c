"""`mlops-ci`: model CI. A code change is trained and gated against the champion before it merges.

    mlops-ci check --dataset sessions [--report report.md] [--reproduce [--repo DIR]]
                   [--family hgb] [--param max_iter=300] [--allow-neutral] [--lock constraints.txt]

From the working tree's code:

1. resolve the dataset's champion (alias ``champion`` of the spec's registered model) and its
   recipe from its lineage tags and run params: data rev, window, seed, split fractions, family,
   hyperparameters (the ones it was fitted with; a search run's chosen ones);
2. load the dataset exactly as of that rev (DVC) and train the working tree's pipeline with that
   recipe (``--family``/``--param`` on top, e.g. to try new hyperparameters) through
   :func:`include.training.train.train_and_register` into a THROW-AWAY MLflow store (a temp SQLite DB +
   artifact dir, deleted afterwards): nothing is registered, aliased or tagged in the real
   registry, and the command checks that before it exits;
3. score both models on the candidate's holdout minus every row either trained on, with the
   promotion gate's own functions (:func:`include.gate.unseen_rows` pieces, :func:`score_pair`,
   :func:`compare_checks`, :func:`decide`): minimums, secondary-metric and slice regressions,
   paired-bootstrap significance;
4. print a Markdown report: metrics side by side, per-slice table, verdict and reasons, what
   changed (code sha vs the champion's; the working tree's lock file vs the full lock the
   champion's training run logged, ``environment/constraints.txt``).

``--reproduce`` retrains the champion's OWN code: its ``code_sha`` checked out in a temporary
``git worktree`` of this project's repository (``--repo``), run in a subprocess on the champion's
rev and recipe into the throw-away store, and compares every metric the champion's run recorded
with the retrain's: an exact match, or "non-determinism" with the metrics that differ and by how much.

Exit status: 0 when the gate would pass the candidate, or when its scores are identical to the
champion's ("no significant change"); 1 when the gate would reject it (or ``--reproduce`` finds
non-determinism); 2 for a usage or setup error (no champion, unknown dataset, missing data rev,
MLflow unreachable).
``--allow-neutral`` also passes a change whose only failed check is significance and that is not
significantly worse either (a refactor that moves scores by noise).

The same environment variables as every stage pick the stores (``MLFLOW_TRACKING_URI``,
``MLOPS_DATA_REPO``, ``MLOPS_DVC_REMOTE``, AWS credentials for S3): embedded or remote, one path.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from include.cli import key_value_arg

LOCK_ARTIFACT = "environment/constraints.txt"  # include.training logs the lock it ran with here

log = logging.getLogger(__name__)

NO_CHANGE = "no significant change"


class CiError(RuntimeError):
    """A setup problem (no champion, unknown dataset, missing rev): exit 2 with this message."""


# ------------------------------------------------------------------------------------------ recipe


@dataclass
class Recipe:
    """How a model version was trained, from its lineage tags and run params."""

    data_rev: str
    data_md5: str
    validation_id: str
    family: str
    params: dict[str, Any]
    seed: int
    holdout_frac: float
    val_frac: float
    window_days: float
    search: bool
    code_sha: str

    def describe(self) -> str:
        win = f", window {self.window_days:g} days" if self.window_days else ""
        return (f"{self.family} {json.dumps(self.params, sort_keys=True)} on data rev {self.data_rev[:10]}{win}, "
                f"seed {self.seed}, fractions {self.holdout_frac:g}/{self.val_frac:g}")


def _param_value(text: str) -> Any:
    """An MLflow param (always a string) back to the Python value it was logged from."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def recipe_of(mv, run) -> Recipe:
    """The recipe of a registered version; a clear error when a piece is not recorded."""
    tags, params = mv.tags or {}, run.data.params
    rev = tags.get("data_rev") or params.get("data_rev")
    if not rev or rev == "unknown":
        raise CiError(f"{mv.name} v{mv.version} records no data_rev: its data cannot be reloaded")
    try:
        return Recipe(
            data_rev=rev, data_md5=tags.get("data_md5", "unknown"), validation_id=tags.get("validation_id", "unknown"),
            family=tags.get("family") or params["family"],
            params={k[3:]: _param_value(v) for k, v in params.items() if k.startswith("hp.")},
            seed=int(params["seed"]), holdout_frac=float(params["holdout_frac"]), val_frac=float(params["val_frac"]),
            window_days=float(tags.get("selection_window_days") or 0),
            search=str(params.get("search", "False")) == "True", code_sha=tags.get("code_sha", "unknown"),
        )
    except (KeyError, ValueError) as err:
        raise CiError(f"{mv.name} v{mv.version} (run {mv.run_id}) has an incomplete training recipe: {err}") from err


# ----------------------------------------------------------------------------------------- stores


@contextmanager
def scratch_store(root: Path):
    """MLflow pointed at a throw-away SQLite store + artifact dir under ``root`` for the block.

    Everything :func:`include.training.train.train_and_register` does (run, model, registered version)
    lands there; the real stores are restored on exit, whatever happens.
    """
    import mlflow

    db = f"sqlite:///{root / 'mlflow.db'}"
    try:
        with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": db, "MLFLOW_REGISTRY_URI": db,
                                          "MLOPS_MLFLOW_ARTIFACT_ROOT": (root / "artifacts").as_uri()}):
            yield
    finally:
        from include.config import settings

        mlflow.set_tracking_uri(settings().mlflow_tracking_uri)
        mlflow.set_registry_uri(settings().mlflow_registry_uri)


def registry_snapshot(c, name: str) -> dict:
    """Everything model CI must not change in the real registry: versions, their tags and aliases,
    the model's tags and aliases."""
    from include.tracking import with_retry

    rm = with_retry(c.get_registered_model, name)
    versions = with_retry(c.search_model_versions, f"name='{name}'")
    return {
        "model_tags": dict(rm.tags or {}),
        "aliases": dict(sorted((a, str(v)) for a, v in (rm.aliases or {}).items())),
        "versions": {str(v.version): {"tags": dict(v.tags or {}), "run_id": v.run_id, "status": v.status}
                     for v in versions},
    }


def data_repo():
    """The data repo to load the champion's rev from, with its DVC remote set from the environment.

    A CI job has a fresh ``git clone`` of the data repo: it holds the manifests and DVC pointers
    but no DVC remote, because the stages keep the remote in the untracked ``.dvc/config.local``
    (``MLOPS_DVC_REMOTE`` + the S3 endpoint, machine-specific). Without it DVC has nowhere to pull
    the champion's rows from. When ``MLOPS_DVC_REMOTE`` is set, the clone gets it the way every
    stage configures its repo (:meth:`DataRepo.ensure`); unset, the repo is used as it is (the
    embedded stack's repo is already configured).
    """
    from include.versioning import DataRepo

    repo = DataRepo()
    if (repo.path / ".dvc").is_dir() and os.environ.get("MLOPS_DVC_REMOTE", "").strip():
        with repo.lock():
            repo.ensure()
    return repo


# -------------------------------------------------------------------------------------- training


def _train(df, spec, recipe: Recipe, *, family: str, params: dict, run_key: str) -> dict:
    from include.training.train import train_and_register

    lineage = {"data_rev": recipe.data_rev, "data_md5": recipe.data_md5, "validation_id": recipe.validation_id,
               "dataset": spec.name, "dag_run_id": run_key,
               "selection_window_days": recipe.window_days or None}
    # search=False: the champion's recorded hyperparameters are the ones it was finally fitted with
    return train_and_register(df, spec, lineage=lineage, family=family, params=params, seed=recipe.seed,
                              reason="model-ci", run_key=run_key, holdout_frac=recipe.holdout_frac,
                              val_frac=recipe.val_frac)


def _trained_in_scratch(result: dict, spec, label: str) -> dict:
    """Model, holdout, training keys and requirements of a version in the (active) scratch store."""
    import mlflow
    import pandas as pd

    from include.gate import training_keys
    from include.tracking import client, configure_mlflow
    from include.training.model_io import load_model

    configure_mlflow()
    c = client()
    mv = c.get_model_version(result["model"], result["version"])
    with tempfile.TemporaryDirectory(prefix="model-ci-holdout-") as tmp:
        holdout = pd.read_parquet(mlflow.artifacts.download_artifacts(result["holdout_uri"], dst_path=tmp))
    return {"model": load_model(result["model"], result["version"]), "holdout": holdout,
            "keys": training_keys(mv, spec, label, c=c), "metrics": result["metrics"],
            "requirements": model_requirements(result["model"], result["version"])}


def model_requirements(name: str, version: str) -> dict[str, str] | None:
    """``{package: version}`` pinned in a registered version's ``requirements.txt``, None if absent."""
    return _artifact_pins(f"models:/{name}/{version}/requirements.txt")


def _artifact_pins(artifact_uri: str) -> dict[str, str] | None:
    """``{package: version}`` pinned in a logged requirements/constraints file, None if it was never
    logged; an unreachable MLflow raises :class:`~include.tracking.TrackingUnavailable` (an outage
    is not "no pins": the report would say nothing changed)."""
    from include.tracking import download_artifact

    with tempfile.TemporaryDirectory(prefix="model-ci-pins-") as tmp:
        local, _ = download_artifact(artifact_uri, tmp)
        return None if local is None else _pins(Path(local).read_text())


def _pins(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of the exact pins in a requirements/constraints text."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, _, ver = line.partition("==")
            out[_canon(name.split("[", 1)[0].strip())] = ver.split(";", 1)[0].strip()
    return out


def _canon(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------ check


@dataclass
class CheckResult:
    dataset: str
    model: str
    champion_version: str
    recipe: Recipe
    candidate: dict  # {family, params, code_sha, dirty}
    verdict: str  # "passed" | "rejected" | NO_CHANGE | a blocked gate verdict
    gate_decision: str
    reasons: list[str]
    checks: list[dict]
    metrics: dict  # {"candidate": {...}, "champion": {...}}
    holdout: dict
    worse: dict | None
    identical: bool
    code: dict
    deps: dict
    reproduce: dict | None = None
    policy_source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.reproduce is not None and not self.reproduce["ok"]:
            return 1
        return 0 if self.verdict in ("passed", NO_CHANGE) else 1


def check(dataset: str, *, family: str | None = None, params: dict | None = None, reproduce: bool = False,
          allow_neutral: bool = False, repo: Path | None = None, lock: Path | None = None) -> CheckResult:
    """Train the working tree's pipeline on the champion's recipe and gate it against the champion."""
    from dvc.exceptions import DvcException
    from dvc_data.index.index import DataIndexError
    from mlflow.exceptions import MlflowException

    from include.gate import (
        CHAMPION,
        INSUFFICIENT_FRESH,
        check_significance,
        compare_checks,
        decide,
        exclude_trained_rows,
        load_policy,
        score_pair,
        training_keys,
    )
    from include.spec import SpecError, load_spec
    from include.tracking import client, configure_mlflow, with_retry
    from include.training.inputs import select_window
    from include.training.lineage import code_sha
    from include.training.metrics import compute_threads
    from include.training.model_io import load_model
    from include.versioning import DataRepoError

    try:
        spec = load_spec(dataset)
    except SpecError as err:
        raise CiError(str(err)) from err
    policy = load_policy(dataset, spec.task)
    name = spec.model_name
    configure_mlflow()
    c = client()
    try:
        champ_mv = with_retry(c.get_model_version_by_alias, name, CHAMPION)
    except MlflowException as err:
        from include.tracking import is_unreachable

        if is_unreachable(err):  # an unreachable store is not "no champion"
            raise
        raise CiError(f"{name} has no {CHAMPION!r} alias, so there is nothing to compare a change with "
                      f"(the first model only meets the gate's absolute minimums): {err.message}") from err
    before = registry_snapshot(c, name)
    champ_run = with_retry(c.get_run, champ_mv.run_id)
    recipe = recipe_of(champ_mv, champ_run)
    cand_family = family or recipe.family
    cand_params = {**(recipe.params if cand_family == recipe.family else {}), **(params or {})}
    label_champ = f"champion v{champ_mv.version}"
    champ_keys = training_keys(champ_mv, spec, label_champ, c=c)
    champ_req = model_requirements(name, str(champ_mv.version))
    champ_lock = run_lock(champ_mv.run_id)
    try:
        df = select_window(data_repo().load(dataset, recipe.data_rev, spec), spec, recipe.window_days)
    except DataRepoError as err:
        raise CiError(f"the champion's data rev cannot be loaded: {err}") from err
    except (DvcException, DataIndexError) as err:  # no remote, not reachable, or the rev's files not in it
        from include.config import settings

        raise CiError(f"the champion's data rev {recipe.data_rev[:10]} cannot be read from the DVC remote "
                      f"{settings().dvc_remote!r} (MLOPS_DVC_REMOTE; for S3 the AWS_* credentials and "
                      f"endpoint): {type(err).__name__}: {err}") from err

    sha = code_sha()
    run_tag = sha[:12]
    with compute_threads():
        champion = load_model(name, champ_mv.version)
        with tempfile.TemporaryDirectory(prefix="model-ci-") as tmp, scratch_store(Path(tmp)):
            cand = _trained_in_scratch(
                _train(df, spec, recipe, family=cand_family, params=cand_params, run_key=f"model-ci/{run_tag}/candidate"),
                spec, "candidate")
            repro = None
            if reproduce:
                again = train_at_commit(repo or _project_root(), recipe, spec, Path(tmp),
                                        run_key=f"model-ci/{recipe.code_sha[:12]}/reproduce")
                repro = compare_metrics(dict(champ_run.data.metrics), again)
                repro["code_sha"] = recipe.code_sha
                repro["champion_dirty"] = champ_run.data.tags.get("code_dirty") == "true"
        configure_mlflow()  # the real store again, for the snapshot below

        fresh, holdout = exclude_trained_rows(cand["holdout"], spec.key, [cand["keys"], champ_keys])
        holdout["min_fresh"] = policy.fresh_minimum(holdout["n_rows"])
        blocked = None
        if holdout["n_fresh"] < holdout["min_fresh"]:
            blocked = (INSUFFICIENT_FRESH, [f"insufficient fresh holdout: {holdout['n_fresh']} rows unseen by both "
                                            f"models < {holdout['min_fresh']} (min_fresh_holdout)"])
        checks: list[dict] = []
        worse = None
        identical = False
        metrics: dict = {"candidate": {}, "champion": {}}
        if holdout["n_fresh"]:
            scored = score_pair(fresh, spec, cand["model"], champion)
            metrics = {"candidate": scored["challenger_metrics"], "champion": scored["champion_metrics"]}
            identical = bool((scored["challenger"] == scored["champion"]).all())
            if blocked is None:
                checks = compare_checks(fresh, spec, scored, policy)
                # the same paired bootstrap the other way round: is the candidate significantly WORSE?
                worse = check_significance(scored["y"], scored["challenger"], scored["champion"], policy)
    decision, reasons = decide(checks, None, blocked)
    verdict = decision
    if identical and blocked is None:
        verdict, reasons = NO_CHANGE, [f"identical scores on all {holdout['n_fresh']} unseen holdout rows: the "
                                       f"change does not alter the model's behaviour (the promotion gate alone "
                                       f"would say: {decision})"]
    elif allow_neutral and decision == "rejected" and worse is not None and not worse["passed"] \
            and all(ch["passed"] for ch in checks if not ch["name"].startswith("significance:")):
        verdict = NO_CHANGE
        reasons = [f"not significantly better nor worse (--allow-neutral): {r}" for r in reasons]

    after = registry_snapshot(c, name)
    if after != before:
        raise RuntimeError(f"model CI changed the real registry of {name}: before {before}, after {after}")
    return CheckResult(
        dataset=dataset, model=name, champion_version=str(champ_mv.version), recipe=recipe,
        candidate={"family": cand_family, "params": cand_params, "code_sha": sha, "dirty": _dirty()},
        verdict=verdict, gate_decision=decision, reasons=reasons, checks=checks, metrics=metrics, holdout=holdout,
        worse=worse, identical=identical, code=code_change(recipe.code_sha, sha),
        deps=dependency_diff(champ_req, cand["requirements"], champ_lock, lock), reproduce=repro,
        policy_source=policy.source,
    )


def compare_metrics(recorded: dict[str, float], again: dict[str, float]) -> dict:
    """Exact comparison of a run's recorded metrics with a retrain's: which differ, by how much."""
    keys = sorted(k for k in recorded if k in again and not k.startswith("search_"))
    differ = [{"metric": k, "recorded": recorded[k], "reproduced": again[k], "delta": again[k] - recorded[k]}
              for k in keys if not (recorded[k] == again[k] or (math.isnan(recorded[k]) and math.isnan(again[k])))]
    return {"ok": not differ, "n_compared": len(keys), "differ": differ}


def _project_root() -> Path:
    from include.config import PROJECT_ROOT

    return PROJECT_ROOT


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(_project_root()), *args], capture_output=True, text=True, timeout=30)


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


def _dirty() -> bool:
    try:
        return bool(_git("status", "--porcelain", "--untracked-files=no").stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return False


def code_change(champion_sha: str, sha: str) -> dict:
    """The working tree against the champion's code sha: the files that differ, when git knows it."""
    out = {"champion": champion_sha, "candidate": sha, "dirty": _dirty(), "files": None, "note": ""}
    if champion_sha in ("", "unknown"):
        out["note"] = "the champion records no code sha"
        return out
    try:
        if _git("cat-file", "-e", f"{champion_sha}^{{commit}}").returncode != 0:
            out["note"] = f"commit {champion_sha[:12]} is not in this checkout (fetch its history to list the files)"
            return out
        out["files"] = [x.replace("\t", " ") for x in
                        _git("diff", "--name-status", champion_sha, "--").stdout.strip().splitlines()]
    except (OSError, subprocess.SubprocessError) as err:
        out["note"] = f"git diff failed: {err}"
    return out


def run_lock(run_id: str) -> dict[str, str] | None:
    """``{package: version}`` of the lock file a training run logged (:data:`LOCK_ARTIFACT`), None if absent."""
    return _artifact_pins(f"runs:/{run_id}/{LOCK_ARTIFACT}")


def dependency_diff(champion: dict[str, str] | None, candidate: dict[str, str] | None,
                    champion_lock: dict[str, str] | None = None, lock_path: Path | None = None) -> dict:
    """What changed in the dependencies: the working tree's lock file against the full lock the
    champion's run logged (every added, removed or re-pinned package), and the model's own pins
    (its ``requirements.txt``) against the candidate's."""
    from include.training.model_io import LOCK_FILE

    lock_path = lock_path or _project_root() / LOCK_FILE
    lock = _pins(lock_path.read_text()) if lock_path.exists() else None
    rows = []
    if champion is not None:
        for pkg in sorted(set(champion) | set(candidate or {})):
            was, now = champion.get(pkg), (candidate or {}).get(pkg) or (lock or {}).get(pkg)
            locked = (lock or {}).get(pkg)
            rows.append({"package": pkg, "champion": was, "candidate": now, "lock": locked, "changed": was != now})
    lock_changes = None
    if champion_lock is not None and lock is not None:
        lock_changes = [{"package": p, "champion": champion_lock.get(p), "candidate": lock.get(p)}
                        for p in sorted(set(champion_lock) | set(lock)) if champion_lock.get(p) != lock.get(p)]
    return {"recorded": champion is not None, "lock": lock is not None, "rows": rows,
            "n_locked": len(lock or {}), "lock_path": str(lock_path.name),
            "champion_lock": champion_lock is not None, "n_champion_locked": len(champion_lock or {}),
            "lock_changes": lock_changes}


# ----------------------------------------------------------------------------------------- report


def _f(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def render(r: CheckResult) -> str:
    from include.training.metrics import HIGHER_IS_BETTER

    badge = {"passed": "PASSED", NO_CHANGE: "NO SIGNIFICANT CHANGE"}.get(r.verdict, r.verdict.upper())
    cand = r.candidate
    lines = [
        f"# Model CI: `{r.dataset}` — **{badge}**", "",
        f"- champion: `{r.model}` v{r.champion_version}, trained as {r.recipe.describe()}",
        f"- candidate: this working tree's pipeline, {cand['family']} {json.dumps(cand['params'], sort_keys=True)}, "
        f"same data rev and seed, trained in a throw-away MLflow store (nothing registered)",
        f"- holdout: {r.holdout['n_fresh']} of {r.holdout['n_rows']} candidate holdout rows unseen by both models "
        f"(excluded {r.holdout['n_excluded']}; minimum {r.holdout['min_fresh']})",
        f"- gate policy: {r.policy_source}", "",
        "## Verdict", "", *[f"- {x}" for x in r.reasons],
    ]
    if r.verdict != r.gate_decision:
        lines.append(f"- the promotion gate alone: {r.gate_decision}")
    sig = next((c for c in r.checks if c["name"].startswith("significance:")), None)
    if sig is not None and r.worse is not None:
        upper = -r.worse["ci_lower"]
        lines.append(f"- {sig['name'].split(':', 1)[1]} change {sig['value']:+.4f}, one-sided {sig['confidence']:.0%} "
                     f"bounds [{sig['ci_lower']:+.4f}, {upper:+.4f}] (paired bootstrap, {sig['n_boot']} samples)"
                     + ("; significantly worse" if r.worse["passed"] else ""))
    lines += ["", "## Metrics", "", "| metric | champion | candidate | change |", "|---|---|---|---|"]
    for m, v in r.metrics["candidate"].items():
        b = r.metrics["champion"].get(m)
        delta = v - b if b is not None else None
        arrow = "" if not delta else (" ▲" if (delta > 0) == HIGHER_IS_BETTER[m] else " ▼")
        lines.append(f"| {m} | {_f(b)} | {_f(v)} | {'–' if delta is None else f'{delta:+.4f}'}{arrow} |")
    slices = [c for c in r.checks if c["name"].startswith("slice:")]
    if slices:
        lines += ["", "## Slices", "", "| slice | rows | champion | candidate | drop | verdict |", "|---|---|---|---|---|---|"]
        for c in slices:
            verdict = "skipped" if c.get("skipped") else ("pass" if c["passed"] else "**FAIL**")
            lines.append(f"| {c['name'][6:]} | {c.get('n')} | {_f(c.get('champion'))} | {_f(c['value'])} | "
                         f"{_f(c.get('drop'))} | {verdict} |")
    if r.checks:
        lines += ["", "## Gate checks", "", "| check | verdict | detail |", "|---|---|---|"]
        for c in r.checks:
            verdict = "skipped" if c.get("skipped") else ("pass" if c["passed"] else "**FAIL**")
            lines.append(f"| {c['name']} | {verdict} | {c['reason']} |")
    code = r.code
    dirty = " + uncommitted changes" if code["dirty"] else ""
    lines += ["", "## What changed", "",
              f"- code: `{code['candidate'][:12]}`{dirty} vs the champion's `{code['champion'][:12]}`"
              + (" (same commit)" if code["candidate"] == code["champion"] and not code["dirty"] else "")]
    if code["files"]:
        shown = code["files"][:30]
        lines.append(f"- files changed since the champion's commit ({len(code['files'])}): "
                     + ", ".join(f"`{x}`" for x in shown) + (" …" if len(code["files"]) > 30 else ""))
    elif code["note"]:
        lines.append(f"- {code['note']}")
    d = r.deps
    lc = d.get("lock_changes")
    if lc is not None:
        lines.append(f"- dependency lock: {d['lock_path']} ({d['n_locked']} packages) vs the lock the champion's "
                     f"run logged ({d['n_champion_locked']}): "
                     + (f"{len(lc)} package(s) changed" if lc else "no locked package changed"))
        if lc:
            lines += ["", "| package | champion's lock | working tree's lock |", "|---|---|---|"]
            lines += [f"| {x['package']} | {x['champion'] or '(absent)'} | {x['candidate'] or '(removed)'} |"
                      for x in lc]
            lines.append("")
    elif not d["lock"]:
        lines.append(f"- dependency lock: the working tree has no {d['lock_path']}, so no lock diff is possible")
    else:
        lines.append(f"- dependency lock: the champion's run logged no lock ({LOCK_ARTIFACT}; trained before "
                     "model CI recorded it), only its model's own pins are compared below")
    if not d["recorded"]:
        lines.append("- model requirements: the champion recorded none")
    else:
        changed = [x for x in d["rows"] if x["changed"]]
        lines.append("- model requirements (the model's own pins): "
                     + ("none changed" if not changed else
                        "changed: " + ", ".join(f"{x['package']} {x['champion']} → {x['candidate']}" for x in changed)))
        lines += ["", "| package | champion | candidate | lock |", "|---|---|---|---|"]
        lines += [f"| {x['package']} | {x['champion'] or '–'} | {x['candidate'] or '–'} | {x['lock'] or '–'} |"
                  for x in d["rows"]]
    if r.reproduce is not None:
        rp = r.reproduce
        lines += ["", "## Reproducibility", ""]
        who = f"the champion's own code (`{rp['code_sha'][:12]}`, a temporary git worktree)"
        if rp["ok"]:
            lines.append(f"- retraining the champion's recipe with {who} reproduced all {rp['n_compared']} of its "
                         f"recorded metrics exactly")
        else:
            lines.append(f"- **non-determinism**: retraining the champion's recipe with {who}, {len(rp['differ'])} "
                         f"of its {rp['n_compared']} recorded metrics differ, the largest: "
                         + ", ".join(f"{x['metric']} by {x['delta']:+.3g}" for x in
                                     sorted(rp["differ"], key=lambda x: -abs(x["delta"]))[:5])
                         + (" …" if len(rp["differ"]) > 5 else ""))
        if rp["champion_dirty"]:
            lines.append("  - caution: the champion was trained from a checkout with uncommitted changes, which "
                         "its commit does not hold; they may explain a difference")
        if not rp["ok"]:
            lines += ["", "| metric | recorded | reproduced | delta |", "|---|---|---|---|"]
            lines += [f"| {x['metric']} | {x['recorded']!r} | {x['reproduced']!r} | {x['delta']:+.3g} |"
                      for x in rp["differ"][:50]]
    lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- cli


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mlops-ci", description="Model CI: train this working tree's pipeline on the "
                                 "champion's data and gate it against the champion.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="train the working tree's pipeline and gate it against the champion")
    p.add_argument("--dataset", required=True, help="dataset spec name (include/specs/<name>.yaml)")
    p.add_argument("--report", type=Path, default=None, help="also write the Markdown report to this file")
    p.add_argument("--reproduce", action="store_true",
                   help="also check that retraining the champion's recipe reproduces its recorded metrics exactly")
    p.add_argument("--family", default=None, help="model family instead of the champion's (simulates a code change)")
    p.add_argument("--param", action="append", type=key_value_arg, default=[], metavar="KEY=VALUE",
                   help="hyperparameter on top of the champion's (repeatable), e.g. --param max_iter=300")
    p.add_argument("--repo", type=Path, default=None,
                   help="git repository holding the champion's code sha for --reproduce (default: this project)")
    p.add_argument("--lock", type=Path, default=None,
                   help="the working tree's lock file to diff with the champion's logged one (default: constraints.txt)")
    p.add_argument("--allow-neutral", action="store_true",
                   help="pass a change that is neither significantly better nor worse (default: the gate's rule)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from include.tracking import TrackingUnavailable, fails_clearly_when_unreachable

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # an outage is a setup error with its cause, not a verdict (nor a traceback)
        result = fails_clearly_when_unreachable("nothing was judged: run mlops-ci again once it is back")(check)(
            args.dataset, family=args.family, params=dict(args.param) or None, reproduce=args.reproduce,
            allow_neutral=args.allow_neutral, repo=args.repo, lock=args.lock)
    except (CiError, TrackingUnavailable) as err:
        print(f"mlops-ci: {err}", file=sys.stderr)
        return 2
    report = render(result)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(report)
    print(report)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
