"""The Assets through which the stages talk. Stdlib + airflow.sdk only: DAG files import this at parse time."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset

# Emitted by `ingest`, one event per new dataset revision: extra {dataset, dvc_rev, md5, rows, validation_id}.
DATASET = Asset(name="dataset", uri="mlops://dataset", group="mlops")
# Emitted by `train` when a version passes the gate: extra {dataset, model, version, run_id}; schedules `deploy`.
MODEL_CANDIDATE = Asset(name="model_candidate", uri="mlops://model_candidate", group="mlops")
# Emitted by `deploy` after the switch: extra {dataset, model, version, endpoint}.
DEPLOYMENT = Asset(name="deployment", uri="mlops://deployment", group="mlops")
# Emitted by `batch_score` when a run is finalized: extra {dataset, model, version, batch_run_id, output,
# rows_in, scored, rejected, reject_reasons, score (histogram), mlflow_run_id}.
BATCH_PREDICTIONS = Asset(name="batch_predictions", uri="mlops://batch_predictions", group="mlops")


def asset_extras(triggering_asset_events: Any, asset: Asset) -> list[dict]:
    """The ``extra`` of every triggering event of ``asset``, oldest first ([] for manual/API runs).

    A run scheduled on an Asset may collect several events (two datasets ingested, two models
    passing the gate) before the scheduler creates it; each one must be handled, not only the newest.
    """
    if not triggering_asset_events:
        return []
    try:
        events = triggering_asset_events[asset]
    except KeyError:
        return []
    return [dict(e.extra or {}) for e in sorted(events, key=lambda e: e.timestamp)]


def newest_per(extras: list[dict], key: str) -> list[dict]:
    """The newest extra for each value of ``key`` (e.g. one dataset revision per dataset), in order."""
    newest: dict[str, dict] = {}
    for extra in extras:
        if extra.get(key):
            newest.pop(extra[key], None)
            newest[extra[key]] = extra
    return list(newest.values())
