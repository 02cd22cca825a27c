"""The drift check of one model version: sample, compare, report, log, decide, record; and its reference data."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.config import settings
from include.drift.decision import _utc, decide_retrain
from include.drift.history import append_entry, load_trigger_history
from include.drift.labels import join_labels
from include.drift.mlflow_log import log_to_mlflow
from include.drift.policy import DriftPolicy
from include.drift.report import DriftResult, compute_drift
from include.drift.sampling import count_rows, sample_for_drift
from include.jsonsafe import json_safe
from include.recordlog import drift_trigger_log
from include.spec import DatasetSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)


def _safe_dir_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:120]


def run_drift_check(
    *,
    dataset: str,
    model_name: str,
    model_version: str | int,
    reference_df: Any,
    current_df: Any,
    policy: DriftPolicy | None = None,
    now: dt.datetime,
    run_key: str | None = None,
    spec: DatasetSpec | None = None,
    prediction_col: str | None = "prediction",
    labeled_df: pd.DataFrame | None = None,
    last_retrain_at: dt.datetime | None = None,
    log_mlflow: bool = True,
    record: bool = True,
    triggers_file: Path | None = None,
) -> dict:
    """One drift check: sample, compare, report, log, decide, record. Returns a small JSON-able dict.

    ``reference_df``: the champion's data (a DataFrame, e.g. :func:`reference_for_model`).
    ``current_df``: the prediction-log window, a DataFrame or parquet path(s) (streamed and
    sampled, never loaded whole). ``labeled_df`` (key + target), when given with a DataFrame
    window, adds model quality from late labels. ``run_key`` (e.g. the Airflow run id) makes the
    check idempotent: a retry with the same key returns the recorded summary and changes nothing.

    Summary keys: dataset, model_name, model_version, run_key, at, n_reference, n_current,
    n_reference_total, n_current_total, share_drifted, drifted_features, prediction_drift,
    quality, decision {retrain, code, reason, drifted_features, ...}, report_path, report_uri,
    mlflow_run_id, train_conf (the conf for the ``train`` DAG when retrain, else None).
    """
    from include.spec import load_spec

    now = _utc(now)
    spec = spec or load_spec(dataset)
    policy = policy or DriftPolicy.load(dataset)
    if run_key and not re.fullmatch(r"[A-Za-z0-9_.:+@/ -]+", run_key):
        raise ValueError(f"run_key {run_key!r} may only hold letters, digits and _.:+@/- (it goes into "
                         "an MLflow filter and a directory name)")
    replay = _replayed(load_trigger_history(model_name=model_name, path=triggers_file), run_key)
    if replay is not None:  # a retry: nothing is computed, logged or recorded again
        return replay

    n_ref_total, n_cur_total = count_rows(reference_df), count_rows(current_df)
    policy = policy.scaled_to(n_ref_total)
    out_dir = (settings().reports_dir / "drift" / dataset / f"{_safe_dir_name(model_name)}-v{model_version}"
               / (_safe_dir_name(run_key) if run_key else now.strftime("%Y%m%dT%H%M%SZ")))
    if min(n_ref_total, n_cur_total) < policy.min_sample_size:
        result = DriftResult.skipped(dataset, n_reference=n_ref_total, n_current=n_cur_total, policy=policy)
    else:
        cur = current_df
        if not _is_frame(current_df):  # stream parquet: sample before anything is in memory
            cur = sample_for_drift(current_df, policy.sample_size, policy.seed + 1)
        result = compute_drift(reference_df, cur, spec, prediction_col=prediction_col, policy=policy,
                               out_dir=out_dir)
        result.n_current_total = n_cur_total
        if labeled_df is not None and _is_frame(current_df) and spec.key in current_df.columns \
                and prediction_col and prediction_col in current_df.columns:
            result.quality = join_labels(current_df, labeled_df, spec.key, target=spec.target,
                                         prediction_col=prediction_col, task=spec.task).summary()
    tlog = drift_trigger_log(triggers_file)
    # Decide and record atomically: two checks running at once must not both see "no recent
    # trigger" and both retrain. The expensive part (sampling, Evidently) ran above, unlocked.
    with tlog.lock:
        history = load_trigger_history(model_name=model_name, path=tlog.path)
        replay = _replayed(history, run_key)
        if replay is not None:
            return replay
        decision = decide_retrain(result, policy, history, now=now, model_name=model_name,
                                  last_retrain_at=last_retrain_at)
        run_id = None
        report_uri = Path(result.report_html).resolve().as_uri() if result.report_html else None
        if log_mlflow and result.computed:
            run_id = log_to_mlflow(result, model_name, model_version, decision=decision, run_key=run_key)
            if result.report_html:
                report_uri = f"runs:/{run_id}/drift_report/drift_report.html"
        summary = json_safe({
            "dataset": dataset, "model_name": model_name, "model_version": str(model_version),
            "run_key": run_key, "at": now.isoformat(),
            "n_reference": result.n_reference, "n_current": result.n_current,
            "n_reference_total": n_ref_total, "n_current_total": n_cur_total,
            "share_drifted": result.share_drifted, "drifted_features": result.drifted_features,
            "prediction_drift": ({"score": result.prediction.score, "drifted": result.prediction.drifted}
                                 if result.prediction else None),
            "quality": result.quality,
            "decision": decision.to_dict(),
            "report_path": result.report_html, "report_uri": report_uri, "mlflow_run_id": run_id,
            "train_conf": ({"reason": "drift", "trigger": decision.code,
                            "drifted_features": decision.drifted_features,
                            "report_uri": report_uri, "monitoring_run_id": run_id,
                            "model_version": str(model_version),
                            **({"window_days": policy.retrain_window_days} if policy.retrain_window_days else {}),
                            } if decision.retrain else None),
        })
        if record:
            append_entry(tlog, decision, model_name=model_name, model_version=model_version,
                         dataset=dataset, run_key=run_key, summary=summary)
    log.info("drift check %s v%s: %s", model_name, model_version, decision.reason)
    return summary


def _replayed(history: list[dict], run_key: str | None) -> dict | None:
    if not run_key:
        return None
    for entry in history:
        if entry.get("run_key") == run_key and entry.get("summary"):
            log.info("drift check %s already decided (%s): returning the recorded summary",
                     run_key, entry.get("code"))
            return {**entry["summary"], "replayed": True}
    return None


def _is_frame(x: Any) -> bool:
    import pandas as pd

    return isinstance(x, pd.DataFrame)


def reference_for_model(
    model_name: str,
    model_version: str | int,
    *,
    spec: DatasetSpec | None = None,
    prediction_col: str | None = "prediction",
) -> pd.DataFrame:
    """The data a registered version was trained on (its ``dataset``/``data_rev`` tags, via DVC).

    With ``prediction_col``, the version's scores are added for the rows it did not train on
    (its val + test split, rebuilt with the run's seed and fractions) and NaN elsewhere: in-sample
    scores are sharper than anything the model produces in serving, so comparing the prediction
    log with them would report prediction drift on day one.
    """
    import numpy as np
    import pandas as pd

    from include.spec import load_spec
    from include.tracking import client, with_retry
    from include.versioning import DataRepo

    c = client()
    mv = with_retry(c.get_model_version, model_name, str(model_version))
    dataset, rev = mv.tags.get("dataset"), mv.tags.get("data_rev")
    if not dataset or not rev or rev == "unknown":
        raise ValueError(f"{model_name} v{model_version} has no dataset/data_rev tags: cannot find its data")
    spec = spec or load_spec(dataset)
    df = DataRepo().load(dataset, rev, spec)
    if not prediction_col:
        return df
    from include.training.inputs import split
    from include.training.metrics import predict_scores
    from include.training.model_io import load_model

    params = with_retry(c.get_run, mv.run_id).data.params
    _, val, test = split(df, spec, seed=int(params.get("seed", 42)),
                         holdout_frac=float(params.get("holdout_frac", 0.2)),
                         val_frac=float(params.get("val_frac", 0.2)))
    held = pd.concat([val, test], ignore_index=True)
    model = load_model(model_name, str(model_version))
    scores = dict(zip(held[spec.key], predict_scores(model, held, spec), strict=True))
    df[prediction_col] = df[spec.key].map(scores).astype(float) if scores else np.nan
    return df
