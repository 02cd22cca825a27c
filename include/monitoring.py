"""Glue for the `monitor_drift` DAG: which model, which window, which reference, which labels.

The reference is the champion's own training data at its recorded DVC revision (never "latest"),
the current window is the prediction log of that version, and late ground truth comes from the
newest dataset revision (a later batch carries labels for sessions served earlier), joined by key.
"""

from __future__ import annotations

import datetime as dt
import logging

log = logging.getLogger(__name__)


def datasets_with_champion() -> list[str]:
    """Every dataset whose registered model has a ``champion`` (only those have traffic to check)."""
    from include.catalog import dataset_names
    from include.spec import load_spec
    from include.tracking import alias_version, configure_mlflow

    configure_mlflow()
    return [d for d in dataset_names() if alias_version(load_spec(d).model_name, "champion") is not None]


def check_champion(dataset: str, *, window_hours: float, run_key: str, now: dt.datetime | None = None,
                   force_retrain: bool = False) -> dict:
    """Drift check of ``dataset``'s champion; the summary's ``train_conf`` (if any) names the dataset."""
    from include.config import settings
    from include.drift import reference_for_model, run_drift_check
    from include.metrics_push import drift_outcome
    from include.serving.predlog import read_predictions
    from include.spec import load_spec
    from include.tracking import alias_version, client, configure_mlflow, with_retry
    from include.versioning import DataRepo, RevisionNotFound

    s = settings()
    spec = load_spec(dataset)
    model = spec.model_name
    configure_mlflow()
    version = alias_version(model, "champion")
    if version is None:
        return {"dataset": dataset, "skipped": f"no champion for {model} yet"}
    mv = with_retry(client().get_model_version, model, version)
    now = now or dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(hours=window_hours)
    window = read_predictions(s.predictions_dir, model, since=start, until=now, model_version=mv.version)
    log.info("drift window %s .. %s: %d logged predictions of %s v%s", start, now, len(window), model, mv.version)
    reference = reference_for_model(model, mv.version, spec=spec)
    try:
        labeled = DataRepo().load(dataset, "latest", spec)[[spec.key, spec.target]]
    except RevisionNotFound:
        labeled = None
    summary = run_drift_check(
        dataset=dataset, model_name=model, model_version=mv.version, reference_df=reference,
        current_df=window, now=now, run_key=run_key, spec=spec, labeled_df=labeled,
        last_retrain_at=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC),
    )
    if force_retrain and not summary.get("train_conf"):
        summary["train_conf"] = {"reason": "drift-check: forced by operator", "trigger": "forced",
                                 "drifted_features": summary.get("drifted_features") or [],
                                 "report_uri": summary.get("report_uri"), "model_version": str(mv.version)}
    if summary.get("train_conf"):
        # the retrain must train THIS dataset, whatever else exists
        summary["train_conf"] = {**summary["train_conf"], "dataset": dataset}
    drift_outcome({**summary, "dataset": dataset}, features=[c.name for c in spec.feature_columns])
    return {**summary, "dataset": dataset}


def policies_overlay(target, *, datasets: list[str] | None = None, **drift_overrides):
    """A copy of the configured policies dir with some drift-policy keys changed; returns its path.

    For demos and tests that must see the loop close within minutes (cooldown off), while the
    shipped policies stay as they are. Applies to ``datasets`` (default: every dataset with a spec).
    Point MLOPS_POLICIES_DIR at the result.
    """
    import shutil
    from pathlib import Path

    import yaml

    from include.catalog import dataset_names
    from include.config import settings

    target = Path(target)
    shutil.copytree(settings().policies_dir, target, dirs_exist_ok=True)
    for dataset in datasets if datasets is not None else dataset_names():
        path = target / f"drift_{dataset}.yaml"
        drift = yaml.safe_load(path.read_text()) if path.exists() else {}
        drift.update(drift_overrides)
        path.write_text(yaml.safe_dump(drift))
    return target
