"""Where a batch run keeps its files and how a step tells what is already done (shared by the steps).

Output of a run (``<output>/<dataset>/<batch_run_id>/``)::

    _plan.json                 the resolved run: model version (resolved once), partitions
    _model/model.skops         the model's skops file, fetched once by plan (md5 in the plan)
    scores/part-00000.parquet  key, score[, label], model_name, model_version, data_rev, source,
                               source_md5, row, run_id, batch_run_id
    rejects/part-00000.parquet source, row, key, type, field, reason, values (JSON)
    _manifest.json             rows in / scored / rejected, reasons, score histogram, MLflow run
"""

from __future__ import annotations

import hashlib
import json
import re

from include.batch import sources

EXPERIMENT = "batch-scoring"
HIST_BINS = 20
PLAN, MANIFEST = "_plan.json", "_manifest.json"
META_KEY = "mlops.batch"


class BatchInputError(ValueError):
    """The run cannot be planned as asked (unknown version or alias, nothing to score)."""


def batch_run_id(run_id: str) -> str:
    """A file-name-safe id for a DAG run id (``manual__2026-01-01T00:00:00+00:00``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-")[:200]


def default_output() -> str:
    from include.config import settings

    return str(settings().state_dir / "batch")


def fingerprint(part: dict) -> str:
    keys = ("model", "version", "source", "source_md5", "data_rev", "row_groups", "superseded_by", "run_id")
    return hashlib.sha1(json.dumps({k: part.get(k) for k in keys}, sort_keys=True).encode()).hexdigest()


def label(part: dict) -> str:
    src = part["source"].rsplit("/", 1)[-1]
    rg = part.get("row_groups")
    return f"{part['index']}: {src}" + (f" rg {rg[0]}-{rg[1]}" if rg and part["count"] > 1 else "")


def part_paths(base: str, index: int) -> tuple[str, str]:
    name = f"part-{index:05d}.parquet"
    return sources.join(base, "scores", name), sources.join(base, "rejects", name)


def committed_stats(fs, path: str) -> dict | None:
    import pyarrow.parquet as pq

    if not sources.exists(fs, path):
        return None
    with fs.open_input_file(path) as fh:
        meta = pq.ParquetFile(fh).metadata.metadata or {}
    raw = meta.get(META_KEY.encode())
    return json.loads(raw) if raw else None

