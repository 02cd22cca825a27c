"""One MLflow run per drift check in the "monitoring" experiment, tagged onto the model version."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from include.drift.decision import Decision
from include.drift.report import DriftResult

log = logging.getLogger(__name__)

MONITORING_EXPERIMENT = "monitoring"


def _metric_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", s)[:250]


def log_to_mlflow(
    result: DriftResult,
    model_name: str,
    model_version: str | int,
    *,
    decision: Decision | None = None,
    run_key: str | None = None,
) -> str:
    """One run in the "monitoring" experiment for this check; returns its run id.

    Logs share/count of drifted features, per-feature scores and adjusted p-values, prediction
    drift and label quality as metrics, the Evidently HTML/JSON and our result JSON as artifacts
    (``drift_report/``), and tags the run with the model name/version and the decision. Sets
    ``last_drift_run_id`` (and the share) on the model version. With a ``run_key`` a retry finds
    the run of the first attempt (tag ``drift.run_key``) instead of logging a second one.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from include.tracking import client, configure_mlflow, is_not_found, with_retry

    experiment_id = configure_mlflow(MONITORING_EXPERIMENT)
    c = client()
    version = str(model_version)
    if run_key and "'" in run_key:
        raise ValueError(f"run_key {run_key!r} must not contain quotes")
    if run_key:
        found = with_retry(c.search_runs, [experiment_id],
                           filter_string=f"tags.`drift.run_key` = '{run_key}' and attributes.status = 'FINISHED'",
                           max_results=1)
        if found:
            log.info("monitoring run for run_key %s exists: %s", run_key, found[0].info.run_id)
            return found[0].info.run_id
    tags = {
        "model_name": model_name, "model_version": version, "dataset": result.dataset,
        "monitoring.kind": "drift", "drift.model_uri": f"models:/{model_name}/{version}",
        "drift.drifted_features": ",".join(result.drifted_features)[:5000],
        "mlflow.runName": f"drift-{model_name}-v{version}",
    }
    if run_key:
        tags["drift.run_key"] = run_key
    if decision is not None:
        tags.update({"drift.retrain": str(decision.retrain).lower(), "drift.decision": decision.code,
                     "drift.reason": decision.reason[:5000]})
    metrics = {
        "share_drifted": result.share_drifted, "n_drifted": float(len(result.drifted_features)),
        "n_features": float(len(result.features)), "n_reference": float(result.n_reference),
        "n_current": float(result.n_current), "n_current_total": float(result.n_current_total),
        "n_reference_total": float(result.n_reference_total),
    }
    for f in result.features:
        metrics[_metric_name(f"drift_score.{f.column}")] = f.score
        metrics[_metric_name(f"drift_p_adj.{f.column}")] = f.p_adjusted
    if result.prediction is not None:
        metrics["prediction_drift_score"] = result.prediction.score
        metrics["prediction_drift_p"] = result.prediction.p_adjusted
    for m, v in ((result.quality or {}).get("metrics") or {}).items():
        metrics[_metric_name(f"quality.{m}")] = v
    if result.quality:
        metrics["quality.n_labeled"] = float(result.quality.get("n_labeled", 0))
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(float(v))}

    def _log() -> str:
        with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
            mlflow.log_params({"alpha": result.alpha, "correction": result.correction,
                               "sample_reference": result.n_reference, "sample_current": result.n_current})
            mlflow.log_metrics(metrics)
            for p in (result.report_html, result.report_json):
                if p and Path(p).exists():
                    mlflow.log_artifact(p, "drift_report")
            mlflow.log_dict(result.to_dict(), "drift_report/drift_result.json")
            if decision is not None:
                mlflow.log_dict(decision.to_dict(), "drift_report/decision.json")
            return run.info.run_id

    run_id = with_retry(_log)
    try:
        for k, v in (("last_drift_run_id", run_id), ("last_drift_share", f"{result.share_drifted:.4f}"),
                     ("last_drift_retrain", str(decision.retrain).lower() if decision else "")):
            with_retry(c.set_model_version_tag, model_name, version, k, v)
    except MlflowException as err:
        if not is_not_found(err):
            raise
        log.warning("model %s version %s is not in the registry: not tagged with last_drift_run_id",
                    model_name, version)
    return run_id
