"""Train a scikit-learn pipeline from a dataset spec and register it in MLflow with full lineage.

Public API:

* :func:`split` - deterministic train/val/test split (time-based when the spec has a timestamp);
  the test split is the holdout the gate compares champion and challenger on.
* :func:`build_pipeline` - ColumnTransformer + estimator for a model family.
* :func:`train_and_register` - checks inputs, fits, logs params/metrics/plots/holdout/dataset to
  one MLflow run and registers one model version tagged with its lineage. Idempotent per ``run_key``.
* :func:`load_model` / :func:`predict_scores` - load a registered version (skops, with this
  module's own allow-list of types) and score a frame.
* :func:`compute_metrics` - the metric set of a task from labels and scores (shared with the gate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from include.config import PROJECT_ROOT, settings
from include.crashpoints import crash_point
from include.infra_validation import log_golden_scores
from include.spec import DatasetSpec
from include.tracking import (
    client,
    configure_mlflow,
    fails_clearly_when_unreachable,
    is_unreachable,
    with_retry,
)

log = logging.getLogger(__name__)

# Types that skops does not trust by default but our own pipelines contain. Computed from the fitted
# pipelines of every family (``skops.io.get_untrusted_types``); tests/unit/test_training.py checks
# that each family needs exactly these and nothing else. Used at save (MLflow verifies the dump
# loads) and at load (:func:`load_model` passes this list, never the one stored in the artifact).
SKOPS_TRUSTED_TYPES: list[str] = [
    "numpy.dtype",  # OneHotEncoder(dtype=np.float64) stores a dtype object
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # the trees of "hgb"
]

FAMILIES: dict[str, tuple[str, ...]] = {
    "classification": ("logreg", "hgb"),
    "regression": ("ridge", "hgb"),
}

DEFAULT_PARAMS: dict[tuple[str, str], dict[str, Any]] = {
    ("classification", "logreg"): {"C": 1.0, "max_iter": 2000},
    ("classification", "hgb"): {
        "learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 8, "min_samples_leaf": 50,
        "l2_regularization": 1.0, "early_stopping": False,
    },
    ("regression", "ridge"): {"alpha": 1.0},
    ("regression", "hgb"): {
        "learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 8, "min_samples_leaf": 50,
        "l2_regularization": 1.0, "early_stopping": False,
    },
}

# Candidates tried on top of the given params when search=True (picked by the val primary metric).
SEARCH_SPACE: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("classification", "logreg"): [{"C": 0.1}, {"C": 1.0}, {"C": 10.0}],
    ("classification", "hgb"): [
        {"learning_rate": 0.1, "max_leaf_nodes": 15},
        {"learning_rate": 0.05, "max_leaf_nodes": 31},
        {"learning_rate": 0.05, "max_leaf_nodes": 31, "l2_regularization": 1.0, "max_iter": 300},
    ],
    ("regression", "ridge"): [{"alpha": 0.1}, {"alpha": 1.0}, {"alpha": 10.0}],
    ("regression", "hgb"): [
        {"learning_rate": 0.1, "max_leaf_nodes": 15},
        {"learning_rate": 0.05, "max_leaf_nodes": 31},
        {"learning_rate": 0.05, "max_leaf_nodes": 31, "l2_regularization": 1.0, "max_iter": 300},
    ],
}

PRIMARY_METRIC = {"classification": "roc_auc", "regression": "rmse"}
HIGHER_IS_BETTER = {
    "roc_auc": True, "accuracy": True, "f1": True, "log_loss": False,
    "rmse": False, "mae": False, "r2": True,
}
METRICS = {"classification": ("roc_auc", "accuracy", "f1", "log_loss"), "regression": ("rmse", "mae", "r2")}

MIN_ROWS = 50
LINEAGE_KEYS = ("data_rev", "data_md5", "validation_id", "dataset", "dag_run_id")
# The `dataset` Asset's extra says {dvc_rev, md5}: accepted for {data_rev, data_md5}.
LINEAGE_ALIASES = {"data_rev": "dvc_rev", "data_md5": "md5"}
MODEL_ARTIFACT = "model"
# Run tags that describe the run, not the version (every other non-system run tag is a version tag).
MODEL_URI_TAG = "model_uri"
RUN_ONLY_TAGS = frozenset({"code_dirty", "registered_version", MODEL_URI_TAG})
RECIPE_TAG = "recipe"  # training_recipe(): versions with the same one are the same model
HOLDOUT_ARTIFACT = "holdout/holdout.parquet"
# The keys of the rows that shaped the model (its training and validation splits): whoever scores
# this version later must leave them out, or it is graded on rows it has memorised.
TRAINING_KEYS_ARTIFACT = "lineage/training_keys.parquet"
LOCK_FILE = "constraints.txt"  # logged as environment/constraints.txt of every training run
MISSING = "__missing__"


class TrainingInputError(ValueError):
    """The inputs cannot be trained on; the message says what to fix. Nothing was logged."""


# ----------------------------------------------------------------------------------------- lineage


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


def code_sha() -> str:
    """``git rev-parse HEAD`` of the project, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def _code_dirty() -> str:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return "true" if out.stdout.strip() else "false"


def make_run_key(dataset: str, data_rev: str, *, family: str = "hgb", params: dict | None = None,
                 seed: int = 42, search: bool = False) -> str:
    """A run key derived from everything that determines the model: same inputs, same key.

    Passing it to :func:`train_and_register` makes a retry or a re-trigger on the same data and
    config return the existing version instead of registering a second one.
    """
    cfg = json.dumps({"family": family, "params": params or {}, "seed": seed, "search": search},
                     sort_keys=True, default=str)
    digest = hashlib.sha256(cfg.encode()).hexdigest()[:10]
    return f"{dataset}@{data_rev}/{family}/{digest}"


def code_identity() -> str:
    """The code a model is trained with: the git sha, plus a digest of the uncommitted changes to
    tracked files under include/ and dags/ (the code, specs and policies) when the checkout is
    dirty; outside git (the Docker image has no .git), a digest of those files."""
    sha = code_sha()
    if sha == "unknown":
        h = hashlib.sha256()
        files = [p for d in ("include", "dags") for p in (PROJECT_ROOT / d).rglob("*")
                 if p.suffix in (".py", ".yaml") and p.is_file()]
        for p in sorted(files):
            h.update(str(p.relative_to(PROJECT_ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
        return "tree:" + h.hexdigest()[:16]
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "diff", "HEAD", "--binary", "--", "include", "dags"],
                             capture_output=True, timeout=30)
        diff = out.stdout if out.returncode == 0 else str(time.time_ns()).encode()
    except (OSError, subprocess.SubprocessError):
        diff = str(time.time_ns()).encode()  # cannot tell what changed: never equal to another run
    return f"{sha}+diff:{hashlib.sha256(diff).hexdigest()[:16]}" if diff else sha


def training_recipe(spec: DatasetSpec, lineage: dict[str, str], *, code: str, family: str, params: dict,
                    seed: int, search: bool, holdout_frac: float, val_frac: float) -> str:
    """A digest of everything that determines the model: the data (dataset, rev, md5 and how rows were
    selected from it), the spec, the code and the training config. Same recipe, same model (fits
    are seeded), so a second version of it would be a duplicate (:func:`train_and_register`)."""
    import dataclasses

    body = {
        "data": {k: lineage.get(k) for k in ("dataset", "data_rev", "data_md5")},
        "selection": {k: str(v) for k, v in sorted(lineage.items()) if k.startswith("selection_") and v is not None},
        "spec": {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("path", "description")},
        "code": code,
        "config": {"family": family, "params": params, "seed": seed, "search": search,
                   "holdout_frac": holdout_frac, "val_frac": val_frac},
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------ inputs


def model_input_columns(spec: DatasetSpec) -> list[str]:
    """The columns the pipeline reads, in spec order (datetime features are not used)."""
    used = set(spec.numeric_features) | set(spec.categorical_features)
    return [c.name for c in spec.feature_columns if c.name in used]


def _check_family(spec: DatasetSpec, family: str) -> None:
    known = FAMILIES[spec.task]
    if family not in known:
        raise TrainingInputError(
            f"unknown model family {family!r} for a {spec.task} task; known families: {', '.join(known)}"
        )


def check_frame(df: pd.DataFrame, spec: DatasetSpec) -> None:
    """Fail with a message saying what to fix when the frame cannot be trained on."""
    if not isinstance(df, pd.DataFrame):
        raise TrainingInputError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if spec.target not in df.columns:
        raise TrainingInputError(
            f"target column {spec.target!r} of spec {spec.name!r} is not in the data "
            f"(columns: {list(df.columns)}); fix `target` in the spec or load the right dataset"
        )
    missing = [c for c in model_input_columns(spec) if c not in df.columns]
    if missing:
        raise TrainingInputError(
            f"feature column(s) {missing} of spec {spec.name!r} are not in the data; "
            "the data does not follow the spec (fix the spec's columns or the data)"
        )
    if spec.timestamp and spec.timestamp not in df.columns:
        raise TrainingInputError(
            f"timestamp column {spec.timestamp!r} of spec {spec.name!r} is not in the data; "
            "remove `timestamp` from the spec or add the column"
        )
    n_null = int(df[spec.target].isna().sum())
    if n_null:
        raise TrainingInputError(
            f"target {spec.target!r} has {n_null} missing value(s); drop unlabeled rows before training"
        )
    if len(df) < MIN_ROWS:
        raise TrainingInputError(
            f"dataset too small to split: {len(df)} rows, need at least {MIN_ROWS}; add more data"
        )
    if spec.task == "classification":
        classes = pd.unique(df[spec.target])
        if len(classes) < 2:
            raise TrainingInputError(
                f"target {spec.target!r} has a single class ({classes[0]!r}); a classifier needs "
                "both classes: add data with the other label"
            )
        if len(classes) > 2:
            raise TrainingInputError(
                f"target {spec.target!r} has {len(classes)} classes; only binary classification is "
                "supported (map the target to two labels)"
            )
    else:
        if not pd.api.types.is_numeric_dtype(df[spec.target]):
            raise TrainingInputError(
                f"target {spec.target!r} is {df[spec.target].dtype}, not numeric; a regression needs a "
                "numeric target (or set `task: classification` in the spec)"
            )


def select_window(df: pd.DataFrame, spec: DatasetSpec, days: float) -> pd.DataFrame:
    """Rows whose timestamp lies within ``days`` of the newest one (``days <= 0``: every row).

    After concept drift, a model fitted mostly on rows from before the drift learns the old world;
    a window lets a retrain see the new one only (the gate still decides whether that is better).
    """
    if not days or days <= 0:
        return df
    if not spec.timestamp:
        raise TrainingInputError(f"window_days={days} needs a timestamp column; spec {spec.name!r} has none")
    ts = pd.to_datetime(df[spec.timestamp], utc=True)
    return df[ts >= ts.max() - pd.Timedelta(days=float(days))].reset_index(drop=True)


def split(df: pd.DataFrame, spec: DatasetSpec, *, seed: int = 42, holdout_frac: float = 0.2,
          val_frac: float = 0.2) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Deterministic (train, val, test); fractions are of the whole frame.

    With a spec timestamp: sorted by (timestamp, key), the last ``holdout_frac`` rows are test and
    the ``val_frac`` before them val, so the model is judged on data newer than it saw. Without
    one: a shuffle seeded by ``seed`` of the rows sorted by key (row order of the input does not
    matter). Test is the gate's holdout.
    """
    if not (0 < holdout_frac < 1 and 0 < val_frac < 1 and holdout_frac + val_frac < 1):
        raise TrainingInputError(
            f"holdout_frac={holdout_frac} and val_frac={val_frac} must be in (0, 1) with a sum below 1"
        )
    n = len(df)
    if n < MIN_ROWS:
        raise TrainingInputError(
            f"dataset too small to split: {n} rows, need at least {MIN_ROWS}; add more data"
        )
    keys = [c for c in (spec.timestamp, spec.key) if c and c in df.columns]
    if spec.timestamp and spec.timestamp in df.columns:
        ordered = df.sort_values(keys, kind="mergesort")
    else:
        base = df.sort_values(keys, kind="mergesort") if keys else df
        perm = np.random.default_rng(seed).permutation(n)
        ordered = base.iloc[perm]
    ordered = ordered.reset_index(drop=True)
    n_test = int(round(n * holdout_frac))
    n_val = int(round(n * val_frac))
    n_train = n - n_val - n_test
    parts = (ordered.iloc[:n_train], ordered.iloc[n_train:n_train + n_val], ordered.iloc[n_train + n_val:])
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        if part.empty:
            raise TrainingInputError(f"the {name} split is empty ({n} rows); add data or change the fractions")
    return parts[0].reset_index(drop=True), parts[1].reset_index(drop=True), parts[2].reset_index(drop=True)


def _check_splits(spec: DatasetSpec, parts: dict[str, pd.DataFrame]) -> None:
    if spec.task != "classification":
        return
    how = f"the last rows by {spec.timestamp!r}" if spec.timestamp else "a seeded shuffle"
    for name, part in parts.items():
        classes = pd.unique(part[spec.target])
        if len(classes) < 2:
            raise TrainingInputError(
                f"the {name} split ({len(part)} rows, {how}) has a single class ({classes[0]!r}) of "
                f"target {spec.target!r}; metrics and the gate need both: add data with the other "
                "label or change holdout_frac/val_frac"
            )


# ---------------------------------------------------------------------------------------- pipeline


def resolve_params(spec: DatasetSpec, family: str, params: dict | None) -> dict[str, Any]:
    _check_family(spec, family)
    return {**DEFAULT_PARAMS[(spec.task, family)], **(params or {})}


def build_pipeline(spec: DatasetSpec, family: str, params: dict | None = None, seed: int = 42) -> Pipeline:
    """Preprocessing from the spec + the family's estimator (params override the defaults)."""
    hp = resolve_params(spec, family, params)
    linear = family in ("logreg", "ridge")
    numeric = spec.numeric_features
    with_values = [c for c in spec.categorical_features if spec.column(c).values is not None]
    free = [c for c in spec.categorical_features if spec.column(c).values is None]

    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        if linear:
            num = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        else:
            num = "passthrough"  # HistGradientBoosting handles missing values itself
        transformers.append(("num", num, numeric))
    if with_values:
        transformers.append(("cat", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING)),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False,
                                     categories=[list(spec.column(c).values) for c in with_values])),
        ]), with_values))
    if free:
        transformers.append(("cat_free", Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING)),
            ("onehot", OneHotEncoder(handle_unknown="infrequent_if_exist", max_categories=50,
                                     sparse_output=False)),
        ]), free))
    if not transformers:
        raise TrainingInputError(f"spec {spec.name!r} has no numeric or categorical feature columns")
    pre = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=True)

    if spec.task == "classification":
        est = LogisticRegression(random_state=seed) if family == "logreg" else \
            HistGradientBoostingClassifier(random_state=seed)
    else:
        est = Ridge(random_state=seed) if family == "ridge" else HistGradientBoostingRegressor(random_state=seed)
    try:
        est.set_params(**hp)
    except ValueError as err:
        valid = sorted(est.get_params())
        raise TrainingInputError(f"bad params {hp} for family {family!r}: {err}; valid names: {valid}") from err
    return Pipeline([("pre", pre), ("model", est)])


# ----------------------------------------------------------------------------------------- metrics


def positive_label(model: Pipeline) -> Any:
    return model.classes_[1]


def predict_scores(model: Pipeline, df: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """P(positive class) for classification, the prediction for regression (float array)."""
    X = df[model_input_columns(spec)]
    if spec.task == "classification":
        return np.asarray(model.predict_proba(X)[:, 1], dtype=float)
    return np.asarray(model.predict(X), dtype=float)


def compute_metrics(y: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    """Metric set of a task. Classification: y in {0,1} (positive = 1) and P(positive)."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=float)
    if task == "classification":
        y = y.astype(int)
        pred = (scores >= 0.5).astype(int)
        both = len(np.unique(y)) == 2
        return {
            "roc_auc": float(roc_auc_score(y, scores)) if both else float("nan"),
            "accuracy": float(accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, zero_division=0)),
            "log_loss": float(log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1])),
        }
    y = y.astype(float)
    return {
        "rmse": float(math.sqrt(mean_squared_error(y, scores))),
        "mae": float(mean_absolute_error(y, scores)),
        "r2": float(r2_score(y, scores)) if len(y) > 1 else float("nan"),
    }


def target_array(df: pd.DataFrame, spec: DatasetSpec, model: Pipeline) -> np.ndarray:
    """The target as the metrics expect it: 0/1 against the model's positive class, or floats."""
    if spec.task == "classification":
        return (df[spec.target].to_numpy() == positive_label(model)).astype(int)
    return df[spec.target].to_numpy(dtype=float)


def slice_labels(df: pd.DataFrame, column: str) -> np.ndarray:
    return df[column].astype(object).where(df[column].notna(), MISSING).astype(str).to_numpy()


def metric_key(prefix: str, metric: str, column: str | None = None, value: str | None = None) -> str:
    """MLflow-safe metric name: ``test_roc_auc`` or ``test_roc_auc__device.mobile``.

    MLflow metric names allow only alphanumerics, ``_ - . / space`` (and ``:`` off Windows), so
    ``=`` is not usable; other characters of slice values become ``_``.
    """
    key = f"{prefix}_{metric}"
    if column is not None:
        safe = re.sub(r"[^A-Za-z0-9_.\- ]", "_", f"{column}.{value}")
        key = f"{key}__{safe}"
    return key


def _slice_metrics(y: np.ndarray, scores: np.ndarray, df: pd.DataFrame, spec: DatasetSpec) -> dict[str, float]:
    out: dict[str, float] = {}
    for col in spec.slices:
        if col not in df.columns:
            continue
        labels = slice_labels(df, col)
        for value in np.unique(labels):
            mask = labels == value
            out[metric_key("test", "n", col, value)] = float(mask.sum())
            for name, v in compute_metrics(y[mask], scores[mask], spec.task).items():
                if not math.isnan(v):
                    out[metric_key("test", name, col, value)] = v
    return out


# ------------------------------------------------------------------------------------------- plots


def _write_plots(out_dir: Path, model: Pipeline, spec: DatasetSpec, test: pd.DataFrame, val: pd.DataFrame,
                 y_test: np.ndarray, s_test: np.ndarray, seed: int) -> dict[str, float]:
    """Confusion matrix + ROC (classification) or residuals (regression), and permutation importance."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import confusion_matrix, roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.task == "classification":
        cm = confusion_matrix(y_test, (s_test >= 0.5).astype(int), labels=[0, 1])
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, str(v), ha="center", va="center")
        ax.set_xticks([0, 1], ["0", "1"])
        ax.set_yticks([0, 1], ["0", "1"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title("Confusion matrix (test, threshold 0.5)")
        fig.tight_layout()
        fig.savefig(out_dir / "confusion_matrix.png", dpi=100)

        fpr, tpr, _ = roc_curve(y_test, s_test)
        fig = Figure(figsize=(4, 4))
        ax = fig.subplots()
        ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(y_test, s_test):.3f}")
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC (test)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out_dir / "roc_curve.png", dpi=100)
        scoring = "roc_auc"
    else:
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        ax.scatter(s_test, y_test - s_test, s=6, alpha=0.5)
        ax.axhline(0, color="grey", linestyle="--")
        ax.set_xlabel("predicted")
        ax.set_ylabel("residual (actual - predicted)")
        ax.set_title("Residuals (test)")
        fig.tight_layout()
        fig.savefig(out_dir / "residuals.png", dpi=100)
        scoring = "neg_root_mean_squared_error"

    sample = val if len(val) <= 2000 else val.sample(2000, random_state=seed)
    cols = model_input_columns(spec)
    y_val = target_array(sample, spec, model)
    result = permutation_importance(model, sample[cols], y_val, scoring=scoring, n_repeats=5,
                                    random_state=seed, n_jobs=1)
    importances = dict(zip(cols, (float(v) for v in result.importances_mean), strict=True))
    order = sorted(importances, key=importances.get)
    fig = Figure(figsize=(6, 0.35 * len(cols) + 1.2))
    ax = fig.subplots()
    ax.barh(order, [importances[c] for c in order])
    ax.set_xlabel(f"mean drop in {scoring} when permuted (val)")
    ax.set_title("Permutation importance")
    fig.tight_layout()
    fig.savefig(out_dir / "permutation_importance.png", dpi=100)
    (out_dir / "permutation_importance.json").write_text(json.dumps(importances, indent=2))
    return importances


# ---------------------------------------------------------------------------------------- registry


def compute_threads():
    """Limit BLAS/OpenMP threads while fitting and scoring.

    The data here is small (thousands to ~1e5 rows) and Airflow runs tasks side by side; measured on
    this 2-core machine under load, HistGradientBoosting fit took 3.9 s with OpenMP threads and
    0.18 s with one. ``settings().train_threads`` (if the config defines it) overrides the default 1.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(getattr(settings(), "train_threads", None) or 1))


def _validate_run_key(run_key: str) -> None:
    if not isinstance(run_key, str) or not run_key.strip():
        raise TrainingInputError("run_key must be a non-empty string (e.g. from make_run_key())")
    if any(ch in run_key for ch in "'\"\\") or len(run_key) > 250:
        raise TrainingInputError(f"run_key {run_key!r} must be at most 250 characters without quotes or backslashes")


def _versions_with_key(name: str, run_key: str, *, once: bool = False) -> list:
    """``once``: a single request, for callers that are themselves a retry loop or a cleanup that a
    later attempt redoes (nested retries on a dead server only delay the task's failure)."""
    c = client()
    query = f"name='{name}' and tags.run_key='{run_key}'"
    return c.search_model_versions(query) if once else with_retry(c.search_model_versions, query)


def _result_from_version(mv) -> dict:
    run = with_retry(client().get_run, mv.run_id)
    return {
        "model": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "metrics": dict(run.data.metrics),
        "holdout_uri": f"runs:/{mv.run_id}/{HOLDOUT_ARTIFACT}",
        "reused": True,
    }


def _find_existing(name: str, run_key: str, experiment_id: str) -> dict | None:
    """The complete version for ``run_key``, after finishing or removing what an attempt left.

    Complete = READY and its run FINISHED. A FINISHED run with a logged model but no version is
    committed work whose process died before registering: it is registered now (roll forward).
    Anything else under the key (RUNNING or FAILED runs, versions of unfinished runs) is deleted
    (roll back) and the caller trains again.
    """
    c = client()
    runs = {r.info.run_id: r for r in with_retry(c.search_runs, [experiment_id], f"tags.run_key = '{run_key}'")}
    ready = None
    for mv in _versions_with_key(name, run_key):
        run = runs.get(mv.run_id)  # a deleted run is not returned: its version is not complete either
        if ready is None and mv.status == "READY" and run is not None and run.info.status == "FINISHED":
            ready = mv
            continue
        log.warning("deleting model version %s v%s left by an interrupted attempt (version %s, run %s)",
                    name, mv.version, mv.status, run.info.status if run else "deleted")
        with_retry(c.delete_model_version, name, mv.version)
    if ready is None:
        committed = sorted((r for r in runs.values()
                            if r.info.status == "FINISHED" and r.data.tags.get(MODEL_URI_TAG)),
                           key=lambda r: r.info.start_time)
        if committed:
            run = committed[0]
            log.warning("run %s (run_key %s) finished without its version: registering it", run.info.run_id, run_key)
            tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") and k not in RUN_ONLY_TAGS}
            ready = _register(run.data.tags[MODEL_URI_TAG], name, tags, run_key)
    if ready is not None and runs.get(ready.run_id) is not None \
            and runs[ready.run_id].data.tags.get("registered_version") != str(ready.version):
        with_retry(c.set_tag, ready.run_id, "registered_version", str(ready.version))
    keep = {ready.run_id} if ready else set()
    for run in runs.values():
        if run.info.run_id not in keep:
            log.warning("deleting run %s (run_key %s, %s) that has no complete version",
                        run.info.run_id, run_key, run.info.status)
            if run.info.status == "RUNNING":
                with_retry(c.set_terminated, run.info.run_id, "FAILED")
            with_retry(c.delete_run, run.info.run_id)
    return _result_from_version(ready) if ready else None


def _same_recipe(name: str, recipe: str) -> dict | None:
    """The oldest complete version (READY, run FINISHED) of ``name`` trained from ``recipe``, as a
    :func:`train_and_register` result with ``duplicate_of`` and ``message``; None if there is none."""
    c = client()
    for mv in sorted(with_retry(c.search_model_versions, f"name='{name}' and tags.{RECIPE_TAG}='{recipe}'"),
                     key=lambda v: int(v.version)):
        if mv.status != "READY" or not mv.run_id:
            continue
        run = with_retry(c.get_run, mv.run_id)
        if run.info.status != "FINISHED" or run.info.lifecycle_stage != "active":
            continue
        t = mv.tags
        params = {k[3:]: v for k, v in sorted(run.data.params.items()) if k.startswith("hp.")}
        message = (f"nothing new to train: v{mv.version} already has this recipe (data rev "
                   f"{t.get('data_rev', '?')[:12]}, code {t.get('code_sha', '?')[:12]}, {t.get('family', '?')} "
                   f"{params} seed {run.data.params.get('seed', '?')}); force=True trains it again")
        return {**_result_from_version(mv), "duplicate_of": str(mv.version), "recipe": recipe, "message": message}
    return None


def _str_tags(d: dict) -> dict[str, str]:
    return {k: ("" if v is None else str(v))[:5000] for k, v in d.items()}


# ------------------------------------------------------------------------------------------- train


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
    :func:`training_recipe` (same data rev and selection, spec, code and config: the same model):
    that version is returned with ``duplicate_of`` and a ``message`` saying so, unless ``force``.
    Raises :class:`~include.tracking.TrackingUnavailable` when MLflow cannot be reached.
    Raises :class:`TrainingInputError` (before anything is logged) when the inputs are unusable.
    """
    t0 = time.perf_counter()
    _validate_run_key(run_key)
    if not isinstance(lineage, dict):
        raise TrainingInputError("lineage must be a dict with data_rev, data_md5, validation_id, dataset, dag_run_id")
    hp = resolve_params(spec, family, params)
    build_pipeline(spec, family, hp, seed)  # validates the params before anything is logged
    check_frame(df, spec)
    train, val, test = split(df, spec, seed=seed, holdout_frac=holdout_frac, val_frac=val_frac)
    _check_splits(spec, {"train": train, "val": val, "test": test})

    name = spec.model_name  # each dataset owns its registered model
    experiment_id = configure_mlflow()
    existing = _find_existing(name, run_key, experiment_id)
    if existing is not None:
        log.info("run_key %s already registered as %s v%s; not retraining", run_key, name, existing["version"])
        return existing
    lin = {k: str(lineage.get(k) or lineage.get(LINEAGE_ALIASES.get(k, k)) or "unknown") for k in LINEAGE_KEYS}
    if lin["dataset"] == "unknown":
        lin["dataset"] = spec.name
    selection = {k: v for k, v in lineage.items() if k.startswith("selection_")}
    recipe = training_recipe(spec, {**lin, **selection}, code=code_identity(), family=family, params=hp, seed=seed,
                             search=search, holdout_frac=holdout_frac, val_frac=val_frac)
    if lin["data_rev"] != "unknown" and not force:  # an unknown rev says nothing about the data
        same = _same_recipe(name, recipe)
        if same is not None:
            log.info("%s (run_key %s)", same["message"], run_key)
            return same

    with compute_threads():  # small data: oversubscribed OpenMP is far slower than 1 thread
        sha = code_sha()
        # why this version exists (e.g. the drift report that triggered it) and how its rows were
        # chosen ride along as trigger_* / selection_* tags
        trigger = {k: str(v)[:5000] for k, v in lineage.items()
                   if k.startswith(("trigger_", "selection_")) and v is not None}
        version_tags = {**lin, **trigger, "code_sha": sha, "reason": reason, "run_key": run_key, "family": family,
                        RECIPE_TAG: recipe, **({"forced": "true"} if force else {})}

        if search:
            hp, tried = _search(spec, family, hp, seed, train, val)
        else:
            tried = []
        model = _fit(spec, family, hp, seed, train)

        cols = model_input_columns(spec)
        metrics: dict[str, float] = {}
        scores = {}
        for part_name, part in (("train", train), ("val", val), ("test", test)):
            y = target_array(part, spec, model)
            s = predict_scores(model, part, spec)
            scores[part_name] = (y, s)
            for m, v in compute_metrics(y, s, spec.task).items():
                metrics[metric_key(part_name, m)] = v
        metrics.update(_slice_metrics(*scores["test"], test, spec))

        run_name = f"{lin['dataset']}-{family}-{lin['data_rev'][:12]}"
        run_tags = {**version_tags, "code_dirty": _code_dirty(), "mlflow.runName": run_name}
        run_params = {
            "family": family, "seed": seed, "search": search, "holdout_frac": holdout_frac, "val_frac": val_frac,
            "n_train": len(train), "n_val": len(val), "n_test": len(test), "n_features": len(cols),
            "split": "time" if spec.timestamp else "shuffle", "task": spec.task,
            **{k: lin[k] for k in ("data_rev", "data_md5", "validation_id", "dataset")},
            **{f"hp.{k}": v for k, v in hp.items()},
        }
        mv = None
        # An exception in here ends the run FAILED (the context manager) with no version to undo.
        with warnings.catch_warnings(), mlflow.start_run(experiment_id=experiment_id, tags=_str_tags(run_tags)) as run:
            run_id = run.info.run_id
            # MLflow hints that int columns cannot hold NaN; the spec decides nullability, not MLflow.
            warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column", category=UserWarning)
            _hush_skops_module_scan()
            mlflow.log_params(run_params)
            mlflow.log_metrics(metrics)
            for i, t in enumerate(tried):
                mlflow.log_metric(f"search_val_{PRIMARY_METRIC[spec.task]}",
                                  t[f"val_{PRIMARY_METRIC[spec.task]}"], step=i)
            source = DvcDatasetSource(lin["dataset"], lin["data_rev"], lin["data_md5"], str(settings().data_repo))
            for context, part in (("training", train), ("validation", val), ("testing", test)):
                ds = mlflow.data.from_pandas(part, source=source, name=f"{lin['dataset']}-{context}",
                                             targets=spec.target)
                mlflow.log_input(ds, context=context)

            with tempfile.TemporaryDirectory(prefix="train-") as tmp:
                tmp_path = Path(tmp)
                _write_plots(tmp_path / "plots", model, spec, test, val, *scores["test"], seed)
                mlflow.log_artifacts(str(tmp_path / "plots"), "plots")
                holdout_cols = [c for c in spec.column_names if c in test.columns]
                hpath = tmp_path / "holdout" / "holdout.parquet"
                hpath.parent.mkdir()
                test[holdout_cols].to_parquet(hpath, index=False)
                mlflow.log_artifact(str(hpath), "holdout")
                log_golden_scores(hpath, model, spec)  # what deploy's infra validation must reproduce
                _log_training_keys(tmp_path, spec, train, val)
                if (PROJECT_ROOT / LOCK_FILE).exists():  # the full lock this code ran with: mlops-ci diffs it
                    mlflow.log_artifact(str(PROJECT_ROOT / LOCK_FILE), "environment")
                if tried:
                    (tmp_path / "candidates.json").write_text(json.dumps(tried, indent=2, default=str))
                    mlflow.log_artifact(str(tmp_path / "candidates.json"), "search")

            example = train[cols].head(5)
            # the signature describes the pyfunc flavor (predict -> labels); scores: predict_scores()
            signature = infer_signature(train[cols].head(500), model.predict(train[cols].head(500)))
            info = mlflow.sklearn.log_model(
                model, name=MODEL_ARTIFACT, signature=signature, input_example=example,
                skops_trusted_types=SKOPS_TRUSTED_TYPES,
                pip_requirements=_pip_requirements(),
            )
            # Lets a retry register this run's model if the process dies once the run is FINISHED.
            mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
            crash_point("train.after_log_model")
        # The run is FINISHED here: the commit point. Only now may a version point at it, so the
        # gate never sees a version whose run is still RUNNING or has failed.
        crash_point("train.after_finish")
        try:
            # Registered with its lineage tags in one call: a version never exists without run_key.
            mv = _register(info.model_uri, name, _str_tags(version_tags), run_key)
            crash_point("train.after_register")
            with_retry(client().set_tag, run_id, "registered_version", str(mv.version))
        except BaseException:
            if _cleanup_failed(name, run_key, mv):
                _set_failed(run_id)  # undone: the retry trains again rather than adopt this run
            raise
        log.info("trained %s v%s (%s) in %.1fs: test %s=%.4f", name, mv.version, family, time.perf_counter() - t0,
                 PRIMARY_METRIC[spec.task], metrics[metric_key("test", PRIMARY_METRIC[spec.task])])
        return {
            "model": name,
            "version": str(mv.version),
            "run_id": run_id,
            "metrics": metrics,
            "holdout_uri": f"runs:/{run_id}/{HOLDOUT_ARTIFACT}",
            "reused": False,
        }


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


def _register(model_uri: str, name: str, tags: dict[str, str], run_key: str, attempts: int = 4):
    """Register once. After an unreachable-store error, look the version up by ``run_key`` before
    trying again: the request may have been applied even though the answer was lost."""
    for attempt in range(1, attempts + 1):
        try:
            return mlflow.register_model(model_uri, name, tags=tags)
        except Exception as exc:
            if attempt == attempts or not is_unreachable(exc):
                raise
            time.sleep(min(10.0, 2.0 ** (attempt - 1)))
            try:
                found = [v for v in _versions_with_key(name, run_key, once=True) if v.run_id]
            except Exception as lookup_exc:
                if not is_unreachable(lookup_exc):
                    raise
                found = []
            if found:
                return found[0]
    raise AssertionError("unreachable")  # pragma: no cover


def _cleanup_failed(name: str, run_key: str, mv) -> bool:
    """No half-registered version may remain: delete any version of this attempt.

    True when none remains; False when the registry could not be asked or a deletion failed, and
    the next attempt's :func:`_find_existing` has to judge what is there.
    """
    clean = True
    try:
        versions = _versions_with_key(name, run_key, once=True)
    except Exception:  # registry unreachable: the next attempt's _find_existing cleans up
        log.exception("could not look up versions for run_key %s during cleanup", run_key)
        versions, clean = ([mv] if mv is not None else []), False
    for v in versions:
        try:
            client().delete_model_version(name, v.version)
            log.warning("deleted model version %s v%s of a failed attempt", name, v.version)
        except Exception:
            log.exception("could not delete model version %s v%s", name, v.version)
            clean = False
    return clean


def _set_failed(run_id: str) -> None:
    try:
        client().set_terminated(run_id, "FAILED")
    except Exception:  # the run stays FINISHED without a version; the next attempt registers it
        log.exception("could not mark run %s FAILED", run_id)


def _pip_requirements() -> list[str]:
    """Pinned requirements of the model (explicit: skips MLflow's slow inference subprocess)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")]


# -------------------------------------------------------------------------------------------- load


def load_model(name: str, version: str | int) -> Pipeline:
    """The fitted pipeline of ``models:/name/version``, loaded with skops and our own allow-list.

    The trusted types come from :data:`SKOPS_TRUSTED_TYPES` in this module, never from the
    artifact (an artifact could list dangerous types in its own MLmodel file); a model needing
    anything else is refused. Only skops-format models are loaded.
    """
    import skops.io
    from mlflow.models import Model

    configure_mlflow()
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = Path(with_retry(mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=tmp))
        conf = Model.load(str(local / "MLmodel")).flavors.get("sklearn")
        if conf is None:
            raise ValueError(f"{uri} has no sklearn flavor")
        if conf.get("serialization_format") != "skops":
            raise ValueError(f"{uri} is saved as {conf.get('serialization_format')!r}; only skops models are loaded")
        path = local / conf["pickled_model"]
        with warnings.catch_warnings():
            _hush_skops_module_scan()
            untrusted = sorted(set(skops.io.get_untrusted_types(file=path)) - set(SKOPS_TRUSTED_TYPES))
            if untrusted:
                raise ValueError(f"{uri} contains types outside SKOPS_TRUSTED_TYPES: {untrusted}; refusing to load")
            return skops.io.load(path, trusted=SKOPS_TRUSTED_TYPES)


def _hush_skops_module_scan() -> None:
    """skops looks names up on every loaded module; in an Airflow worker that touches Airflow's
    deprecated aliases and floods the task log with FutureWarnings about them. Not ours to fix."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*(is deprecated|deprecated and will be removed).*")
