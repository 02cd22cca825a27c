"""Batch scoring: a registered model version over a whole table, offline, with the online rules.

* :mod:`include.batch.sources` - what to score (a data-repo revision, or CSV/Parquet files by
  path, glob or S3 prefix), split into partitions, read as bounded Arrow record batches;
* :mod:`include.batch.rows` - each chunk validated with the serving schema's rules (rejects get
  the online 422 message) and framed as the model server frames a request;
* :mod:`include.batch.job` - plan (model version resolved once) -> score partitions (mapped) ->
  finalize (manifest + MLflow run), each step safe to retry or re-run; the steps are in
  :mod:`~include.batch.planning`, :mod:`~include.batch.scoring`, :mod:`~include.batch.finalizing`
  and the run's files in :mod:`~include.batch.layout`.
* :mod:`include.batch.fastpath` - the vectorised scoring of HistGradientBoosting pipelines, equal
  bit for bit to their own predict;
* :mod:`include.batch.triggers` - the per-dataset policy for scheduled runs (new data, promotion).

Heavy imports (pandas, pyarrow, sklearn, mlflow) live in the submodules: importing this package
is cheap.
"""

from __future__ import annotations

__all__ = ["plan", "plan_jobs", "by_output", "score_partition", "finalize", "run", "manifest_extra", "label", "BatchInputError"]


def __getattr__(name: str):
    if name in __all__:
        from include.batch import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
