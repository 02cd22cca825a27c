"""What a `train` run trains on: the dataset and exact DVC revision, from whichever trigger started it.

Precedence: an explicit ``data_rev`` Param/conf (UI, REST, drift trigger) > the newest triggering
``dataset`` Asset event (scheduled on new data) > "latest" (HEAD of the data repo). The revision is
always resolved to a full commit sha and checked to exist before any training starts.
"""

from __future__ import annotations

from typing import Any

from include.assets import newest_asset_extra


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
