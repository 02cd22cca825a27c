"""The Assets through which the stages talk. Stdlib + airflow.sdk only: DAG files import this at parse time."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset

# Emitted by `ingest` with extra {dataset, dvc_rev, md5, rows, validation_id}; schedules `train`.
DATASET = Asset(name="dataset", uri="mlops://dataset", group="mlops")
# Emitted by `train` when a version passes the gate: extra {model, version, run_id}; schedules `deploy`.
MODEL_CANDIDATE = Asset(name="model_candidate", uri="mlops://model_candidate", group="mlops")
# Emitted by `deploy` after the switch: extra {model, version, endpoint}.
DEPLOYMENT = Asset(name="deployment", uri="mlops://deployment", group="mlops")


def newest_asset_extra(triggering_asset_events: Any, asset_name: str = "dataset") -> dict | None:
    """The ``extra`` of the newest triggering event of the asset, or None (manual/API runs)."""
    if not triggering_asset_events:
        return None
    for asset, events in dict(triggering_asset_events).items():
        # Keys are asset names or AssetUniqueKey-like objects depending on the Airflow code path.
        name = getattr(asset, "name", None) or str(asset)
        if events and (name == asset_name or str(asset).startswith(f"mlops://{asset_name}")):
            newest = max(events, key=lambda e: e.timestamp)
            return dict(newest.extra or {})
    return None
