"""The three steps of a batch scoring run: plan, score each partition, finalize.

The steps live in :mod:`~include.batch.planning`, :mod:`~include.batch.scoring` and
:mod:`~include.batch.finalizing`; the run's files in :mod:`~include.batch.layout`. This module is
their public face (the DAG, the lineage command and the tests import from here).

Commit points: a partition is done when its ``scores`` file exists (its rejects file is committed
just before it; both are written under a temp name and renamed or copied into place whole); the
run is done when ``_manifest.json`` exists. A retried or re-run step finds what is done and does
the rest: a committed partition with the same fingerprint is not scored again, a partition file
is only ever replaced whole (fixed name per partition: never a duplicate), the MLflow run is
looked up by the batch run id before one is created, and leftover temp files are removed.
"""

from __future__ import annotations

from typing import Any

from include.batch.finalizing import finalize, find_run, find_runs
from include.batch.layout import (
    EXPERIMENT,
    HIST_BINS,
    MANIFEST,
    PLAN,
    BatchInputError,
    batch_run_id,
    default_output,
    label,
)
from include.batch.planning import by_output, plan, plan_jobs, resolve_version
from include.batch.scoring import score_partition

__all__ = ["EXPERIMENT", "HIST_BINS", "MANIFEST", "PLAN", "BatchInputError", "batch_run_id", "by_output",
           "default_output", "finalize", "find_run", "find_runs", "label", "manifest_extra", "plan", "plan_jobs",
           "resolve_version", "run", "score_partition"]


def run(params: dict, run_id: str) -> dict:
    """All three steps in this process, in order (the DAG maps the middle one over workers)."""
    parts = plan(params, run_id)
    for part in parts:
        score_partition(part)
    return finalize(parts)


def manifest_extra(manifest: dict) -> dict:
    """What the ``batch_predictions`` Asset event carries: the manifest minus bulky parts."""
    keep = ("dataset", "model", "version", "batch_run_id", "run_id", "trigger", "source", "data_rev", "output", "rows_in",
            "scored", "rejected", "superseded", "reject_reasons", "labels", "score", "mlflow_run_id")
    extra: dict[str, Any] = {k: manifest.get(k) for k in keep}
    extra["reject_reasons"] = dict(list((manifest.get("reject_reasons") or {}).items())[:10])
    return extra
