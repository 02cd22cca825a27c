"""What a `train` run trains on: which datasets, each at an exact DVC revision, from whichever
trigger started the run.

* a run scheduled on the `dataset` Asset trains every dataset that has a new revision among its
  triggering events (the newest revision of each): two datasets ingested together train together;
* a run that names a ``dataset`` (UI form, REST, the drift trigger) trains that dataset at its
  ``data_rev`` (``latest`` = the newest triggering event of that dataset, else the repo's HEAD);
* a run that names nothing, with no event (the UI form's defaults), trains every dataset that has
  data, each at its newest revision; with nothing ingested yet it fails at once saying so.

Each revision is resolved to a full commit sha and checked to exist before any training starts.
"""

from __future__ import annotations

from typing import Any

from include.assets import DATASET, asset_extras, newest_per


def requested(params: dict, triggering_asset_events: Any = None) -> list[dict]:
    """[{dataset, data_rev, rev_source[, optional]}] to train, before any data-repo lookup; an
    ``optional`` dataset without data is skipped instead of failing the run.

    ``params`` already hold the run's conf (Airflow merges conf over the Params' defaults).
    """
    from include.catalog import dataset_names, single_dataset_or_fail

    dataset = params.get("dataset") or None
    rev = params.get("data_rev") or "latest"
    events = newest_per(asset_extras(triggering_asset_events, DATASET), "dataset")
    if dataset is None and rev == "latest" and events:
        return [{"dataset": e["dataset"], "data_rev": e["dvc_rev"], "rev_source": "asset event"} for e in events]
    if dataset is None and rev == "latest":
        # a manual run with the form's defaults: every dataset that has data, each at its newest rev
        return [{"dataset": d, "data_rev": "latest", "rev_source": "every dataset (no dataset named)",
                 "optional": True} for d in dataset_names()]
    if dataset is None:
        dataset = single_dataset_or_fail("train with an explicit data_rev")
    if rev == "latest":
        for e in events:
            if e["dataset"] == dataset:
                return [{"dataset": dataset, "data_rev": e["dvc_rev"], "rev_source": "asset event"}]
    return [{"dataset": dataset, "data_rev": rev, "rev_source": "params"}]


def resolve(params: dict, triggering_asset_events: Any = None) -> list[dict]:
    """Lineage of the data to train on, one per dataset: {dataset, data_rev, data_md5, rows, ...}."""
    from include.spec import SpecError, load_spec
    from include.versioning import DataRepo, RevisionNotFound

    repo, out, empty = DataRepo(), [], []
    wanted = requested(params, triggering_asset_events)
    for want in wanted:
        load_spec(want["dataset"])  # a missing or broken spec fails here, before any data is read
        try:
            lineage = repo.lineage(want["dataset"], want["data_rev"])
        except RevisionNotFound:
            if not want.get("optional"):
                raise
            empty.append(want["dataset"])  # "every dataset" means every dataset that has data
            continue
        lineage["rev_source"] = want["rev_source"]
        out.append(lineage)
    if not out:
        raise SpecError(f"no dataset has data to train on yet ({', '.join(empty)}): land a batch and run ingest")
    return out
