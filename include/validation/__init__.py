"""Stage 1 of the loop: read a landed batch safely and validate it with Great Expectations.

Two kinds of rejection, both raised as :class:`BatchRejected`:

* **structural**, found by :func:`read_batch` before any expectation runs: the file is empty, has
  only a header, uses another delimiter, has missing/extra/duplicate columns, ragged rows, values
  that do not parse as the spec's dtype, invalid UTF-8, a corrupt gzip stream, or is too large
  (``max_bytes`` bounds the file on disk *and* the decompressed stream; ``max_rows`` is checked
  while streaming in chunks, so a huge file is rejected without being loaded);
* **content**, found by :func:`validate` with a GX suite that :func:`build_suite` derives from the
  dataset spec at call time: nulls, ranges, category sets, key uniqueness, NaN floods.

Frames returned by :func:`read_batch` have these dtypes (one rule per spec dtype, whatever the data):

=========== =========================== ====================================================
spec dtype  pandas dtype                note
=========== =========================== ====================================================
int         ``Int64`` (nullable)        ``pd.NA`` for missing; ``astype("float64")`` for numpy
float       ``float64``                 ``NaN`` for missing; ``inf`` is rejected as wrong_dtype
datetime    ``datetime64[ns, UTC]``     ISO 8601 input; offsets converted to UTC
category    ``object`` (str)            missing is ``NaN``
string      ``object`` (str)            missing is ``NaN``
=========== =========================== ====================================================

Missing values: empty cells and pandas' default NA strings ("NA", "null", "NaN", "n/a", ...).

The usual flow (the ingest DAG)::

    try:
        df, report = check_batch(path, spec)
    except BatchRejected as err:
        if err.report is not None:
            save_validation(err.report)
        quarantine(path, err)
        raise
    save_validation(report)

great_expectations is imported inside the functions that need it (its import costs seconds).

Modules: :mod:`.reader` (structural), :mod:`.suite` (GX), :mod:`.report`, :mod:`.quarantine`.
"""

from include.validation.quarantine import quarantine, save_validation
from include.validation.reader import CHUNK_ROWS, SAMPLE_SIZE, read_batch
from include.validation.report import BatchRejected, ValidationReport
from include.validation.suite import NULLABLE_MOSTLY, build_suite, check_batch, new_validation_id, validate

__all__ = [
    "CHUNK_ROWS", "NULLABLE_MOSTLY", "SAMPLE_SIZE", "BatchRejected", "ValidationReport", "build_suite",
    "check_batch", "new_validation_id", "quarantine", "read_batch", "save_validation", "validate",
]
