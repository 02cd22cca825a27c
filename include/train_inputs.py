"""What a `train` run trains on: the dataset and exact DVC revision, from whichever trigger started it.

Precedence: an explicit ``data_rev`` Param/conf (UI, REST, drift trigger) > the newest triggering
``dataset`` Asset event (scheduled on new data) > "latest" (HEAD of the data repo). The revision is
always resolved to a full commit sha and checked to exist before any training starts.
"""

from __future__ import annotations

from typing import Any


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


def resolve(params: dict, triggering_asset_events: Any = None) -> dict:
    """Lineage of the data to train on: {dataset, data_rev, data_md5, rows, validation_id, ...}."""
    from include.versioning import DataRepo

    dataset, rev, source = params.get("dataset") or "sessions", params.get("data_rev") or "latest", "params"
    event = newest_asset_extra(triggering_asset_events)
    if rev == "latest" and event and event.get("dvc_rev"):
        dataset, rev, source = event.get("dataset", dataset), event["dvc_rev"], "asset event"
    lineage = DataRepo().lineage(dataset, rev)
    lineage["rev_source"] = source
    return lineage
