"""Late labels joined onto the prediction log: model quality on served traffic (catches concept drift)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from include.jsonsafe import json_safe

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


@dataclass
class LabelJoin:
    joined: pd.DataFrame  # predictions with the label column, one row per key
    n_predictions: int
    n_labeled: int
    coverage: float
    metrics: dict[str, float]

    def summary(self) -> dict:
        return json_safe({"n_predictions": self.n_predictions, "n_labeled": self.n_labeled,
                          "coverage": self.coverage, "metrics": self.metrics})


def join_labels(
    predictions_df: pd.DataFrame,
    labeled_df: pd.DataFrame,
    key: str,
    *,
    target: str | None = None,
    prediction_col: str = "prediction",
    task: str = "classification",
    ts_col: str = "ts",
) -> LabelJoin:
    """Join late ground truth onto logged predictions by ``key`` and score the model on them.

    Only predictions that carry the key can be joined (``n_predictions`` counts those); duplicates
    keep the last prediction (by ``ts_col`` when present) and the last label. Metrics
    are :func:`include.training.metrics.compute_metrics` (the ones the gate uses: roc_auc, accuracy, f1,
    log_loss; or rmse, mae, r2), empty when no row has a label. ``prediction_col`` holds
    P(positive) for classification, as the serving API logs it.
    """
    import pandas as pd

    if target is None:
        others = [c for c in labeled_df.columns if c != key]
        if len(others) != 1:
            raise ValueError(f"pass target=: labeled_df has columns {list(labeled_df.columns)}")
        target = others[0]
    for frame, name, need in ((predictions_df, "predictions_df", (key, prediction_col)),
                              (labeled_df, "labeled_df", (key, target))):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}")
    preds = predictions_df[predictions_df[key].notna()]  # clients may not send the key
    if ts_col in preds.columns:
        preds = preds.sort_values(ts_col, kind="mergesort")
    preds = preds.drop_duplicates(subset=[key], keep="last")
    labels = labeled_df[[key, target]].dropna(subset=[target]).drop_duplicates(subset=[key], keep="last")
    label_name = target if target not in preds.columns else f"{target}__label"
    labels = labels.rename(columns={target: label_name})
    joined = preds.merge(labels, on=key, how="inner", validate="one_to_one")
    joined = joined[pd.to_numeric(joined[prediction_col], errors="coerce").notna()]
    metrics: dict[str, float] = {}
    if len(joined):
        from include.training.metrics import compute_metrics

        metrics = compute_metrics(joined[label_name].to_numpy(), joined[prediction_col].to_numpy(float), task)
    n_pred = len(preds)
    return LabelJoin(joined=joined.reset_index(drop=True), n_predictions=n_pred, n_labeled=len(joined),
                     coverage=len(joined) / n_pred if n_pred else 0.0, metrics=metrics)
