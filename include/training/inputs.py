"""What a training run reads: the checks that a frame can be trained on, the time window of rows,
and the deterministic train/val/test split (the test split is the holdout the gate compares on).

Nothing here touches MLflow: the gate re-runs :func:`split` to rebuild an old version's training
rows, and every check runs before a training run logs anything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from include.spec import DatasetSpec
from include.training.metrics import model_input_columns

MIN_ROWS = 50


class TrainingInputError(ValueError):
    """The inputs cannot be trained on; the message says what to fix. Nothing was logged."""


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


def check_splits(spec: DatasetSpec, parts: dict[str, pd.DataFrame]) -> None:
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
