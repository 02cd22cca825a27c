"""The plots logged with every training run (``plots/`` of the run): confusion matrix and ROC curve
(classification) or residuals (regression) on the test split, and permutation importance on val."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from include.training.metrics import model_input_columns, target_array

if TYPE_CHECKING:
    import pandas as pd
    from sklearn.pipeline import Pipeline

    from include.spec import DatasetSpec


def write_plots(out_dir: Path, model: Pipeline, spec: DatasetSpec, test: pd.DataFrame, val: pd.DataFrame,
                y_test: np.ndarray, s_test: np.ndarray, seed: int) -> dict[str, float]:
    """Confusion matrix + ROC (classification) or residuals (regression), and permutation importance."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

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
