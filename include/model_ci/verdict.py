"""The check itself: train the working tree's pipeline on the champion's recipe in the throw-away
store, score both models on the rows neither trained on and judge the candidate with the
promotion gate's own checks."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from include.model_ci.changes import (
    code_change,
    dependency_diff,
    dirty,
    model_requirements,
    project_root,
    run_lock,
)
from include.model_ci.errors import CiError
from include.model_ci.recipe import Recipe, recipe_of
from include.model_ci.reproduce import compare_metrics, train_at_commit
from include.model_ci.stores import data_repo, registry_snapshot, scratch_store

NO_CHANGE = "no significant change"


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
    from include.tracking import alias_model_version, client, configure_mlflow, with_retry
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
    champ_mv = alias_model_version(name, CHAMPION, c)  # only "not found" is None: an outage raises
    if champ_mv is None:
        raise CiError(f"{name} has no {CHAMPION!r} alias, so there is nothing to compare a change with "
                      f"(the first model only meets the gate's absolute minimums)")
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
                again = train_at_commit(repo or project_root(), recipe, spec, Path(tmp),
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
        candidate={"family": cand_family, "params": cand_params, "code_sha": sha, "dirty": dirty()},
        verdict=verdict, gate_decision=decision, reasons=reasons, checks=checks, metrics=metrics, holdout=holdout,
        worse=worse, identical=identical, code=code_change(recipe.code_sha, sha),
        deps=dependency_diff(champ_req, cand["requirements"], champ_lock, lock), reproduce=repro,
        policy_source=policy.source,
    )
