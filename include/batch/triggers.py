"""When `batch_score` runs by itself: the per-dataset batch policy, ``batch_<dataset>.yaml``.

A dataset's batch policy (``<policies dir>/batch_<dataset>.yaml``, optionally under a top-level
``batch:`` key, as the drift policies allow) opts it in to scheduled scoring::

    on_new_data: true      # every new revision (a `dataset` Asset event from ingest) is scored,
                           # whole, at that revision, by `model_version` (default: the champion)
    on_promotion: true     # after every promotion (a `deployment` Asset event from deploy) the
                           # new champion scores `source` (default: the newest revision)
    model_version: null    # version or alias for new-data runs (null: `champion`)
    source: latest         # what promotion runs score: a data-repo rev, or files / an s3:// prefix
    output: null           # like the DAG's Params; null: the defaults
    partition_rows: null
    chunk_rows: null

Without a file, or with both switches false (the default), nothing is scored unless asked: the
DAG is then not even scheduled on the Assets (:func:`schedule`), so a loop whose users never
asked for batch scoring runs exactly as before. When some dataset opts in, the DAG is scheduled
on the Assets that some policy wants, and each run scores only the datasets whose policy wants
the event that triggered it; the others are skipped with a log line saying why.

Parse-time safe: stdlib, pydantic (Airflow itself imports it) and ``include.assets``; YAML is
only imported when a policy file exists.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from include.assets import DATASET, DEPLOYMENT, asset_extras, newest_per
from include.policy_errors import describe

log = logging.getLogger(__name__)


class BatchPolicy(BaseModel):
    """One dataset's batch policy; :meth:`from_dict` reads a policy file's mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_new_data: StrictBool = False
    on_promotion: StrictBool = False
    model_version: str | None = None
    source: str = "latest"
    output: str | None = None
    partition_rows: StrictInt | None = Field(None, ge=100)  # whole rows; YAML's true is not 1
    chunk_rows: StrictInt | None = Field(None, ge=100)
    path: str | None = None  # where it was read from (None: the defaults); not a key of the file

    @field_validator("model_version", "output", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return None if v is None else str(v)  # `model_version: 3` is the version "3"

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> Any:
        return str(v) if v not in (None, "") else "latest"

    @classmethod
    def from_dict(cls, raw: Any, *, where: str) -> BatchPolicy:
        """The policy in ``raw`` (a file's mapping, optionally under one ``batch:`` key); a
        ``ValueError`` naming ``where`` and every wrong key otherwise."""
        if raw is None:
            raw = {}
        if isinstance(raw, dict) and isinstance(raw.get("batch"), dict) and len(raw) == 1:
            raw = raw["batch"]
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: a batch policy must be a mapping")
        known = sorted(set(cls.model_fields) - {"path"})
        if "path" in raw:  # set from where the file is, never by the file
            raise ValueError(f"{where}: unknown key 'path' (known: {known})")
        try:
            return cls.model_validate({**raw, "path": where})
        except ValidationError as err:
            raise ValueError(describe(err, where, known=known)) from None


def policy_path(dataset: str, policies_dir: Path | None = None) -> Path:
    if policies_dir is None:
        from include.config import settings

        policies_dir = settings().policies_dir
    return Path(policies_dir) / f"batch_{dataset}.yaml"


def load_policy(dataset: str, policies_dir: Path | None = None) -> BatchPolicy:
    """``batch_<dataset>.yaml`` if present, else the defaults (no scheduled scoring)."""
    path = policy_path(dataset, policies_dir)
    if not path.exists():
        return BatchPolicy()
    import yaml

    return BatchPolicy.from_dict(yaml.safe_load(path.read_text()), where=str(path))


def schedule(datasets: list[str], policies_dir: Path | None = None):
    """The DAG's schedule: None when no dataset opts in, else the Asset(s) some policy wants."""
    policies = [load_policy(d, policies_dir) for d in datasets]
    wanted = [a for a, on in ((DATASET, any(p.on_new_data for p in policies)),
                              (DEPLOYMENT, any(p.on_promotion for p in policies))) if on]
    if not wanted:
        return None
    return wanted[0] if len(wanted) == 1 else wanted[0] | wanted[1]


def requested(params: dict, triggering_asset_events: Any = None) -> list[dict]:
    """The Params of each scoring job this run does: the run's own Params for a manual or REST run;
    for an Asset-triggered run one job per dataset whose policy wants the event ([] if none does).

    Several events may have queued up before the run was created: the newest revision and the
    newest promotion per dataset count; both for one dataset make one job (the promoted version
    scores the new revision).
    """
    new_data = newest_per(asset_extras(triggering_asset_events, DATASET), "dataset")
    promoted = newest_per(asset_extras(triggering_asset_events, DEPLOYMENT), "dataset")
    if not new_data and not promoted:
        return [dict(params)]
    jobs: dict[str, dict] = {}
    for kind, events in (("new data", new_data), ("promotion", promoted)):
        for e in events:
            dataset = e["dataset"]
            policy = load_policy(dataset)
            if not (policy.on_new_data if kind == "new data" else policy.on_promotion):
                what = (f"revision {e.get('dvc_rev')}" if kind == "new data"
                        else f"{e.get('model')} v{e.get('version')} promoted")
                log.info("dataset %s: %s, but its batch policy (%s) does not score on %s: skipped", dataset, what,
                         policy.path or f"no {policy_path(dataset).name}: the default, off", kind)
                continue
            if dataset not in jobs:
                jobs[dataset] = {"dataset": dataset, "source": policy.source, "model_version": policy.model_version,
                                 "output": policy.output, "partition_rows": policy.partition_rows,
                                 "chunk_rows": policy.chunk_rows, "trigger": []}
            job = jobs[dataset]
            if kind == "new data":
                job["source"] = e["dvc_rev"]
                job["trigger"].append(f"new revision {e['dvc_rev']}")
            else:
                job["model_version"] = str(e["version"])
                job["trigger"].append(f"{e.get('model')} v{e['version']} promoted")
    for job in jobs.values():
        log.info("dataset %s: scoring %s with %s (%s; policy %s)", job["dataset"], job["source"],
                 f"v{job['model_version']}" if job["model_version"] else "the champion",
                 ", ".join(job["trigger"]), policy_path(job["dataset"]))
    return list(jobs.values())
