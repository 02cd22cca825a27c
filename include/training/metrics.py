"""How a fitted pipeline is scored: the columns it reads, its scores, the target as the metrics
expect it, and the metric set of a task (shared by training, the gate, model CI, drift and serving).

Cheap to import (numpy and the standard library): the gate and the model server import this
without the training pipeline, MLflow or scikit-learn. Every metric is computed once, by
:func:`weighted_metric` (the gate's bootstrap evaluates it on many weight rows at a time).
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


def weighted_metric(y: np.ndarray, scores: np.ndarray, w: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` for each row of the weight matrix ``w`` (B x n): vectorized over bootstrap samples.

    The one implementation of every metric (:func:`compute_metrics` is this with unit weights).
    A bootstrap sample is a row of multiplicities, so every metric is a weighted sum; AUC uses the
    rank formula (Mann-Whitney) with ties counted as one half, from one sort of the scores.
    Undefined values are NaN: AUC with one class, R^2 with a constant target (scikit-learn's
    r2_score says 0 or 1 there).
    """
    total = w.sum(axis=1)
    if metric == "roc_auc":
        order = np.argsort(scores, kind="mergesort")
        s, yy, ws = scores[order], y[order].astype(float), w[:, order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        gp = np.add.reduceat(ws * yy, starts, axis=1)
        gn = np.add.reduceat(ws * (1.0 - yy), starts, axis=1)
        below = np.cumsum(gn, axis=1) - gn
        num = (gp * (below + 0.5 * gn)).sum(axis=1)
        den = gp.sum(axis=1) * gn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)
    if metric in ("accuracy", "f1", "log_loss"):
        yy = y.astype(float)
        pred = (scores >= 0.5).astype(float)
        if metric == "accuracy":
            return w @ (pred == yy).astype(float) / total
        if metric == "log_loss":
            p = np.clip(scores, 1e-15, 1 - 1e-15)
            return w @ -(yy * np.log(p) + (1 - yy) * np.log(1 - p)) / total
        tp = w @ (pred * yy)
        fp = w @ (pred * (1 - yy))
        fn = w @ ((1 - pred) * yy)
        den = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, 2 * tp / den, 0.0)
    err = scores - y.astype(float)
    if metric == "rmse":
        return np.sqrt(w @ err**2 / total)
    if metric == "mae":
        return w @ np.abs(err) / total
    if metric == "r2":
        yy = y.astype(float)
        sst = w @ yy**2 - (w @ yy) ** 2 / total
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sst > 0, 1 - (w @ err**2) / sst, np.nan)
    raise ValueError(f"unknown metric {metric!r}")


def metric_value(y: np.ndarray, scores: np.ndarray, metric: str) -> float:
    """One metric on the full arrays (classification: y in {0,1}, scores = P(1))."""
    y = np.asarray(y)
    return float(weighted_metric(y, np.asarray(scores, dtype=float), np.ones((1, len(y))), metric)[0])


def compute_metrics(y: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    """Metric set of a task. Classification: y in {0,1} (positive = 1) and P(positive)."""
    y = np.asarray(y).astype(int if task == "classification" else float)
    return {m: metric_value(y, scores, m) for m in METRICS[task]}


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
