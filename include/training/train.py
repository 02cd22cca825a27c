"""Train one model version: :func:`train_and_register` checks its inputs, fits, logs params,
metrics, plots, the holdout and the datasets to one MLflow run and registers one model version
tagged with its lineage. Idempotent per ``run_key``.

Its steps, each a function here: :func:`load` (check and split the inputs; nothing is logged
before it passes) -> the registry lookup (a version for this ``run_key`` or this recipe is
returned as it is) -> :func:`fit` (search, then the final fit) -> :func:`score` (metrics of every
split and slice) -> :func:`record` (the MLflow run, then the version: the run is FINISHED before a
version may point at it).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from sklearn.pipeline import Pipeline

from include.config import PROJECT_ROOT, settings
from include.crashpoints import crash_point
from include.infra_validation import log_golden_scores
from include.spec import DatasetSpec
from include.tracking import client, configure_mlflow, fails_clearly_when_unreachable, with_retry
from include.training.inputs import TrainingInputError, check_frame, check_splits, split
from include.training.lineage import (
    LINEAGE_ALIASES,
    LINEAGE_KEYS,
    RECIPE_TAG,
    code_dirty,
    code_identity,
    code_sha,
    training_recipe,
)
from include.training.metrics import (
    HIGHER_IS_BETTER,
    PRIMARY_METRIC,
    compute_metrics,
    compute_threads,
    metric_key,
    model_input_columns,
    predict_scores,
    slice_metrics,
    target_array,
)
from include.training.model_io import (
    HOLDOUT_ARTIFACT,
    LOCK_FILE,
    TRAINING_KEYS_ARTIFACT,
    hush_skops_module_scan,
    log_model,
)
from include.training.pipeline import SEARCH_SPACE, build_pipeline, resolve_params
from include.training.plots import write_plots
from include.training.registry import (
    MODEL_URI_TAG,
    cleanup_failed,
    find_existing,
    register,
    same_recipe,
    set_failed,
    str_tags,
    validate_run_key,
)

log = logging.getLogger(__name__)


class DvcDatasetSource(DatasetSource):
    """MLflow dataset source for a DVC-tracked dataset at a git revision of the data repo."""

    def __init__(self, dataset: str, rev: str, md5: str = "", repo: str = ""):
        self.dataset, self.rev, self.md5, self.repo = dataset, rev, md5, repo

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, **kwargs):  # the DAG pulls data with DVC, not through MLflow
        raise NotImplementedError("use `dvc pull` at the recorded rev")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "rev": self.rev, "md5": self.md5, "repo": self.repo}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDatasetSource:
        return cls(**{k: source_dict.get(k, "") for k in ("dataset", "rev", "md5", "repo")})


def _register_dataset_source() -> None:
    from mlflow.data.dataset_source_registry import _dataset_source_registry

    if DvcDatasetSource not in _dataset_source_registry.sources:
        _dataset_source_registry.register(DvcDatasetSource)


_register_dataset_source()


def _register_dataset_source() -> None:
    from mlflow.data.dataset_source_registry import _dataset_source_registry

    if DvcDatasetSource not in _dataset_source_registry.sources:
        _dataset_source_registry.register(DvcDatasetSource)


_register_dataset_source()


# -------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Inputs:
    """What :func:`load` checked: the three splits and the config they are trained with."""

    spec: DatasetSpec
    family: str
    hp: dict[str, Any]  # the family's defaults with the given params on top
    seed: int
    search: bool
    holdout_frac: float
    val_frac: float
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class Fitted:
    """What :func:`fit` produced: the pipeline, the params it was fitted with (the search's pick
    when ``search``) and the candidates the search tried."""

    model: Pipeline
    hp: dict[str, Any]
    tried: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Scored:
    """What :func:`score` measured: every metric to log, and the test labels and scores (plots)."""

    metrics: dict[str, float]
    y_test: np.ndarray
    s_test: np.ndarray


def load(df: pd.DataFrame, spec: DatasetSpec, *, lineage: dict, family: str, params: dict | None, seed: int,
         search: bool, run_key: str, holdout_frac: float, val_frac: float) -> Inputs:
    """Check everything that can be checked without MLflow and split the rows; raises
    :class:`TrainingInputError` saying what to fix (nothing has been logged then)."""
    validate_run_key(run_key)
    if not isinstance(lineage, dict):
        raise TrainingInputError("lineage must be a dict with data_rev, data_md5, validation_id, dataset, dag_run_id")
    hp = resolve_params(spec, family, params)
    build_pipeline(spec, family, hp, seed)  # validates the params before anything is logged
    check_frame(df, spec)
    train, val, test = split(df, spec, seed=seed, holdout_frac=holdout_frac, val_frac=val_frac)
    check_splits(spec, {"train": train, "val": val, "test": test})
    return Inputs(spec, family, hp, seed, search, holdout_frac, val_frac, train, val, test)


def recorded_lineage(spec: DatasetSpec, lineage: dict) -> dict[str, str]:
    """:data:`LINEAGE_KEYS` from ``lineage`` (or their Asset-extra aliases), "unknown" when missing."""
    lin = {k: str(lineage.get(k) or lineage.get(LINEAGE_ALIASES.get(k, k)) or "unknown") for k in LINEAGE_KEYS}
    if lin["dataset"] == "unknown":
        lin["dataset"] = spec.name
    return lin


def _fit(spec, family, hp, seed, train):
    pipe = build_pipeline(spec, family, hp, seed)
    pipe.fit(train[model_input_columns(spec)], train[spec.target])
    return pipe


def _search(spec, family, base, seed, train, val) -> tuple[dict, list[dict]]:
    primary = PRIMARY_METRIC[spec.task]
    sign = 1 if HIGHER_IS_BETTER[primary] else -1
    tried = []
    for cand in SEARCH_SPACE[(spec.task, family)]:
        hp = {**base, **cand}
        pipe = _fit(spec, family, hp, seed, train)
        value = compute_metrics(target_array(val, spec, pipe), predict_scores(pipe, val, spec), spec.task)[primary]
        tried.append({"params": hp, f"val_{primary}": value})
    best = max(tried, key=lambda t: sign * t[f"val_{primary}"])
    return best["params"], tried


def fit(inputs: Inputs) -> Fitted:
    """With ``search``: the candidate with the best val primary metric; then the fit on train."""
    x = inputs
    hp, tried = _search(x.spec, x.family, x.hp, x.seed, x.train, x.val) if x.search else (x.hp, [])
    return Fitted(_fit(x.spec, x.family, hp, x.seed, x.train), hp, tried)


def score(inputs: Inputs, model: Pipeline) -> Scored:
    """The task's metrics on train, val and test (``<split>_<metric>``) and on the test slices."""
    spec = inputs.spec
    metrics: dict[str, float] = {}
    scores = {}
    for part_name, part in (("train", inputs.train), ("val", inputs.val), ("test", inputs.test)):
        y = target_array(part, spec, model)
        s = predict_scores(model, part, spec)
        scores[part_name] = (y, s)
        for m, v in compute_metrics(y, s, spec.task).items():
            metrics[metric_key(part_name, m)] = v
    metrics.update(slice_metrics(*scores["test"], inputs.test, spec))
    return Scored(metrics, *scores["test"])


def record(inputs: Inputs, fitted: Fitted, scored: Scored, *, lin: dict[str, str], version_tags: dict,
           run_key: str, experiment_id: str) -> dict:
    """One MLflow run (params, metrics, inputs, plots, holdout, training keys, lock, model), then
    one registered version with ``version_tags``; a failure after registering leaves no version."""
    spec, train, val, test, hp, model = inputs.spec, inputs.train, inputs.val, inputs.test, fitted.hp, fitted.model
    name = spec.model_name
    cols = model_input_columns(spec)
    run_name = f"{lin['dataset']}-{inputs.family}-{lin['data_rev'][:12]}"
    run_tags = {**version_tags, "code_dirty": code_dirty(), "mlflow.runName": run_name}
    run_params = {
        "family": inputs.family, "seed": inputs.seed, "search": inputs.search,
        "holdout_frac": inputs.holdout_frac, "val_frac": inputs.val_frac,
        "n_train": len(train), "n_val": len(val), "n_test": len(test), "n_features": len(cols),
        "split": "time" if spec.timestamp else "shuffle", "task": spec.task,
        **{k: lin[k] for k in ("data_rev", "data_md5", "validation_id", "dataset")},
        **{f"hp.{k}": v for k, v in hp.items()},
    }
    mv = None
    # An exception in here ends the run FAILED (the context manager) with no version to undo.
    with warnings.catch_warnings(), mlflow.start_run(experiment_id=experiment_id, tags=str_tags(run_tags)) as run:
        run_id = run.info.run_id
        # MLflow hints that int columns cannot hold NaN; the spec decides nullability, not MLflow.
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column", category=UserWarning)
        hush_skops_module_scan()
        mlflow.log_params(run_params)
        mlflow.log_metrics(scored.metrics)
        for i, t in enumerate(fitted.tried):
            mlflow.log_metric(f"search_val_{PRIMARY_METRIC[spec.task]}",
                              t[f"val_{PRIMARY_METRIC[spec.task]}"], step=i)
        source = DvcDatasetSource(lin["dataset"], lin["data_rev"], lin["data_md5"], str(settings().data_repo))
        for context, part in (("training", train), ("validation", val), ("testing", test)):
            ds = mlflow.data.from_pandas(part, source=source, name=f"{lin['dataset']}-{context}",
                                         targets=spec.target)
            mlflow.log_input(ds, context=context)

        with tempfile.TemporaryDirectory(prefix="train-") as tmp:
            tmp_path = Path(tmp)
            write_plots(tmp_path / "plots", model, spec, test, val, scored.y_test, scored.s_test, inputs.seed)
            mlflow.log_artifacts(str(tmp_path / "plots"), "plots")
            holdout_cols = [c for c in spec.column_names if c in test.columns]
            hpath = tmp_path / HOLDOUT_ARTIFACT
            hpath.parent.mkdir()
            test[holdout_cols].to_parquet(hpath, index=False)
            mlflow.log_artifact(str(hpath), str(Path(HOLDOUT_ARTIFACT).parent))
            log_golden_scores(hpath, model, spec)  # what deploy's infra validation must reproduce
            _log_training_keys(tmp_path, spec, train, val)
            if (PROJECT_ROOT / LOCK_FILE).exists():  # the full lock this code ran with: mlops-ci diffs it
                mlflow.log_artifact(str(PROJECT_ROOT / LOCK_FILE), "environment")
            if fitted.tried:
                (tmp_path / "candidates.json").write_text(json.dumps(fitted.tried, indent=2, default=str))
                mlflow.log_artifact(str(tmp_path / "candidates.json"), "search")

        info = log_model(model, train[cols])
        # Lets a retry register this run's model if the process dies once the run is FINISHED.
        mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
        crash_point("train.after_log_model")
    # The run is FINISHED here: the commit point. Only now may a version point at it, so the
    # gate never sees a version whose run is still RUNNING or has failed.
    crash_point("train.after_finish")
    try:
        # Registered with its lineage tags in one call: a version never exists without run_key.
        mv = register(info.model_uri, name, str_tags(version_tags), run_key)
        crash_point("train.after_register")
        with_retry(client().set_tag, run_id, "registered_version", str(mv.version))
    except BaseException:
        if cleanup_failed(name, run_key, mv):
            set_failed(run_id)  # undone: the retry trains again rather than adopt this run
        raise
    return {
        "model": name,
        "version": str(mv.version),
        "run_id": run_id,
        "metrics": scored.metrics,
        "holdout_uri": f"runs:/{run_id}/{HOLDOUT_ARTIFACT}",
        "reused": False,
    }


# -------------------------------------------------------------------------------------------- train


@fails_clearly_when_unreachable("the task's retry under the same run key finishes or removes what this "
                                "attempt left (docs/reliability.md)")
def train_and_register(
    df: pd.DataFrame,
    spec: DatasetSpec,
    *,
    lineage: dict,
    family: str = "hgb",
    params: dict | None = None,
    search: bool = False,
    seed: int = 42,
    reason: str = "manual",
    run_key: str,
    holdout_frac: float = 0.2,
    val_frac: float = 0.2,
    force: bool = False,
) -> dict:
    """Fit, log to one MLflow run and register one model version; idempotent per ``run_key``.

    ``lineage``: {data_rev, data_md5, validation_id, dataset, dag_run_id} (the ``dataset`` Asset's
    extra with ``dvc_rev``/``md5`` works too; missing keys are recorded as "unknown"); the code git
    sha is added here. Returns
    ``{model, version, run_id, metrics, holdout_uri, reused}``; ``reused`` is True when a READY
    version with this ``run_key`` already existed and nothing was trained.

    Nothing is trained either when a READY version of the model already has the same
    :func:`~include.training.lineage.training_recipe` (same data rev and selection, spec, code and
    config: the same model): that version is returned with ``duplicate_of`` and a ``message`` saying
    so, unless ``force``.
    Raises :class:`~include.tracking.TrackingUnavailable` when MLflow cannot be reached.
    Raises :class:`TrainingInputError` (before anything is logged) when the inputs are unusable.
    """
    t0 = time.perf_counter()
    inputs = load(df, spec, lineage=lineage, family=family, params=params, seed=seed, search=search,
                  run_key=run_key, holdout_frac=holdout_frac, val_frac=val_frac)

    name = spec.model_name  # each dataset owns its registered model
    experiment_id = configure_mlflow()
    existing = find_existing(name, run_key, experiment_id)
    if existing is not None:
        log.info("run_key %s already registered as %s v%s; not retraining", run_key, name, existing["version"])
        return existing
    lin = recorded_lineage(spec, lineage)
    selection = {k: v for k, v in lineage.items() if k.startswith("selection_")}
    recipe = training_recipe(spec, {**lin, **selection}, code=code_identity(), family=family, params=inputs.hp,
                             seed=seed, search=search, holdout_frac=holdout_frac, val_frac=val_frac)
    if lin["data_rev"] != "unknown" and not force:  # an unknown rev says nothing about the data
        same = same_recipe(name, recipe)
        if same is not None:
            log.info("%s (run_key %s)", same["message"], run_key)
            return same

    with compute_threads():  # small data: oversubscribed OpenMP is far slower than 1 thread
        # why this version exists (e.g. the drift report that triggered it) and how its rows were
        # chosen ride along as trigger_* / selection_* tags
        trigger = {k: str(v)[:5000] for k, v in lineage.items()
                   if k.startswith(("trigger_", "selection_")) and v is not None}
        version_tags = {**lin, **trigger, "code_sha": code_sha(), "reason": reason, "run_key": run_key,
                        "family": family, RECIPE_TAG: recipe, **({"forced": "true"} if force else {})}
        fitted = fit(inputs)
        scored = score(inputs, fitted.model)
        result = record(inputs, fitted, scored, lin=lin, version_tags=version_tags, run_key=run_key,
                         experiment_id=experiment_id)
    log.info("trained %s v%s (%s) in %.1fs: test %s=%.4f", name, result["version"], family,
             time.perf_counter() - t0, PRIMARY_METRIC[spec.task],
             scored.metrics[metric_key("test", PRIMARY_METRIC[spec.task])])
    return result


def training_keys_frame(spec: DatasetSpec, train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """``{<key>, split}`` for every row of the training and validation splits (validation picked
    the early-stopping/search candidate, so it influenced the model too)."""
    return pd.concat([train[[spec.key]].assign(split="train"), val[[spec.key]].assign(split="val")],
                     ignore_index=True)


def _log_training_keys(tmp_path: Path, spec: DatasetSpec, train: pd.DataFrame, val: pd.DataFrame) -> None:
    if spec.key not in train.columns:  # without keys the gate falls back to the run's split recipe
        log.warning("key column %r is not in the data: no %s logged", spec.key, TRAINING_KEYS_ARTIFACT)
        return
    path = tmp_path / TRAINING_KEYS_ARTIFACT
    path.parent.mkdir(parents=True, exist_ok=True)
    training_keys_frame(spec, train, val).to_parquet(path, index=False)
    mlflow.log_artifact(str(path), str(Path(TRAINING_KEYS_ARTIFACT).parent))
