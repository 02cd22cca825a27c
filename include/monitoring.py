"""Glue for the `monitor_drift` DAG: which model, which window, which reference, which labels.

The reference is the champion's own training data at its recorded DVC revision (never "latest"),
the current window is the prediction log of that version, and late ground truth comes from the
newest dataset revision (a later batch carries labels for sessions served earlier), joined by key.
"""

from __future__ import annotations

import datetime as dt
import logging

log = logging.getLogger(__name__)


def check_champion(*, window_hours: float, run_key: str, now: dt.datetime | None = None,
                   force_retrain: bool = False) -> dict:
    from include.config import settings
    from include.drift import reference_for_model, run_drift_check
    from include.serving.predlog import read_predictions
    from include.spec import load_spec
    from include.tracking import client, configure_mlflow
    from include.versioning import DataRepo, DataRepoError

    s = settings()
    configure_mlflow()
    try:
        mv = client().get_model_version_by_alias(s.model_name, "champion")
    except Exception as err:  # noqa: BLE001 - nothing deployed yet is not an error of this DAG
        return {"skipped": f"no champion for {s.model_name} yet ({type(err).__name__})"}
    now = now or dt.datetime.now(dt.UTC)
    dataset = mv.tags.get("dataset", "sessions")
    spec = load_spec(dataset)
    start = now - dt.timedelta(hours=window_hours)
    window = read_predictions(s.predictions_dir, s.model_name, since=start, until=now, model_version=mv.version)
    log.info("drift window %s .. %s: %d logged predictions of %s v%s", start, now, len(window), s.model_name,
             mv.version)
    reference = reference_for_model(s.model_name, mv.version, spec=spec)
    try:
        labeled = DataRepo().load(dataset, "latest", spec)[[spec.key, spec.target]]
    except DataRepoError:
        labeled = None
    summary = run_drift_check(
        dataset=dataset, model_name=s.model_name, model_version=mv.version, reference_df=reference,
        current_df=window, now=now, run_key=run_key, spec=spec, labeled_df=labeled,
        last_retrain_at=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC),
    )
    if force_retrain and not summary.get("train_conf"):
        summary["train_conf"] = {"reason": "drift-check: forced by operator", "trigger": "forced",
                                 "drifted_features": summary.get("drifted_features") or [],
                                 "report_uri": summary.get("report_uri"), "model_version": str(mv.version)}
    return summary


def policies_overlay(target, *, dataset: str = "sessions", **drift_overrides):
    """A copy of the configured policies dir with some drift-policy keys changed; returns its path.

    For demos and tests that must see the loop close within minutes (cooldown off), while the
    shipped policies stay as they are. Point MLOPS_POLICIES_DIR at the result.
    """
    import shutil
    from pathlib import Path

    import yaml

    from include.config import settings

    target = Path(target)
    shutil.copytree(settings().policies_dir, target, dirs_exist_ok=True)
    path = target / f"drift_{dataset}.yaml"
    drift = yaml.safe_load(path.read_text()) if path.exists() else {}
    drift.update(drift_overrides)
    path.write_text(yaml.safe_dump(drift))
    return target
