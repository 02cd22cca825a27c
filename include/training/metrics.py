"""How a fitted pipeline is scored: the columns it reads, its scores, the target as the metrics
expect it, and the metric set of a task (shared by training, the gate, model CI, drift and serving).

Cheap to import (numpy and the standard library): the gate and the model server import this
without the training pipeline or MLflow; scikit-learn's metrics load on the first
:func:`compute_metrics`.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from include.spec import DatasetSpec

PRIMARY_METRIC = {"classification": "roc_auc", "regression": "rmse"}
HIGHER_IS_BETTER = {
    "roc_auc": True, "accuracy": True, "f1": True, "log_loss": False,
    "rmse": False, "mae": False, "r2": True,
}
METRICS = {"classification": ("roc_auc", "accuracy", "f1", "log_loss"), "regression": ("rmse", "mae", "r2")}
MISSING = "__missing__"  # the category of a missing value (pipelines impute it; slices label it)


def model_input_columns(spec: DatasetSpec) -> list[str]:
    """The columns the pipeline reads, in spec order (datetime features are not used)."""
    used = set(spec.numeric_features) | set(spec.categorical_features)
    return [c.name for c in spec.feature_columns if c.name in used]


def compute_threads():
    """Limit BLAS/OpenMP threads while fitting and scoring.

    The data here is small (thousands to ~1e5 rows) and Airflow runs tasks side by side; measured on
    this 2-core machine under load, HistGradientBoosting fit took 3.9 s with OpenMP threads and
    0.18 s with one.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


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
    from sklearn import metrics as skm

    y = np.asarray(y)
    scores = np.asarray(scores, dtype=float)
    if task == "classification":
        y = y.astype(int)
        pred = (scores >= 0.5).astype(int)
        both = len(np.unique(y)) == 2
        return {
            "roc_auc": float(skm.roc_auc_score(y, scores)) if both else float("nan"),
            "accuracy": float(skm.accuracy_score(y, pred)),
            "f1": float(skm.f1_score(y, pred, zero_division=0)),
            "log_loss": float(skm.log_loss(y, np.clip(scores, 1e-15, 1 - 1e-15), labels=[0, 1])),
        }
    y = y.astype(float)
    return {
        "rmse": float(math.sqrt(skm.mean_squared_error(y, scores))),
        "mae": float(skm.mean_absolute_error(y, scores)),
        "r2": float(skm.r2_score(y, scores)) if len(y) > 1 else float("nan"),
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


def slice_metrics(y: np.ndarray, scores: np.ndarray, df: pd.DataFrame, spec: DatasetSpec) -> dict[str, float]:
    """``test_<metric>__<column>.<value>`` (and the slice's row count) for every slice value."""
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
