"""Content checks: the GX suite derived from the spec, run on a read batch."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from include.jsonsafe import json_safe
from include.spec import DatasetSpec
from include.validation.reader import SAMPLE_SIZE, read_batch
from include.validation.report import BatchRejected, ValidationReport

if TYPE_CHECKING:
    import great_expectations as gx

#: Nullable columns may be missing now and then, but a batch where more than 10% of a nullable
#: column is null is far more likely a broken export (a NaN flood) than real data.
NULLABLE_MOSTLY = 0.9


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx

    return gx


def build_suite(spec: DatasetSpec) -> gx.ExpectationSuite:
    """The GX expectation suite for a dataset, derived from its spec now (never stored or parsed at import).

    * the exact column set, and at least one row;
    * non-nullable columns: no nulls; nullable columns: at most 10% nulls (``NULLABLE_MOSTLY``,
      the NaN-flood guard);
    * numeric ``min``/``max`` bounds; category ``values`` sets (nulls are judged by the null rules);
    * the key column is unique.
    """
    gx = _gx()
    E = gx.expectations
    expectations: list = [
        E.ExpectTableColumnsToMatchSet(column_set=spec.column_names, exact_match=True),
        E.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    for col in spec.columns:
        if col.nullable:
            expectations.append(E.ExpectColumnValuesToNotBeNull(
                column=col.name, mostly=NULLABLE_MOSTLY,
                notes=f"NaN-flood guard: nullable, but at most {1 - NULLABLE_MOSTLY:.0%} nulls"))
        else:
            expectations.append(E.ExpectColumnValuesToNotBeNull(column=col.name))
        if col.is_numeric and (col.min is not None or col.max is not None):
            expectations.append(E.ExpectColumnValuesToBeBetween(
                column=col.name, min_value=col.min, max_value=col.max))
        if col.values is not None:
            expectations.append(E.ExpectColumnValuesToBeInSet(column=col.name, value_set=list(col.values)))
    expectations.append(E.ExpectColumnValuesToBeUnique(column=spec.key))
    return gx.ExpectationSuite(
        name=f"{spec.name}_spec_suite",
        expectations=expectations,
        meta={"generated_from_spec": spec.name, "spec_path": str(spec.path) if spec.path else None},
    )


def _failures_from(result: dict, spec: DatasetSpec) -> list[dict]:
    """Failed expectations as small dicts, table-level first, then in the spec's column order."""
    failures = []
    for r in result.get("results", []):
        if r.get("success"):
            continue
        cfg = r.get("expectation_config", {})
        kwargs = {k: v for k, v in (cfg.get("kwargs") or {}).items() if k != "batch_id"}
        res = r.get("result") or {}
        exc = r.get("exception_info") or {}
        failure = {
            "expectation": cfg.get("type"),
            "column": kwargs.get("column"),
            "kwargs": kwargs,
            "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": res.get("unexpected_percent"),
            "sample_values": _as_spec_values(list(res.get("partial_unexpected_list") or [])[:SAMPLE_SIZE],
                                             kwargs.get("column"), spec),
        }
        if res.get("partial_unexpected_index_list"):
            failure["sample_rows"] = list(res["partial_unexpected_index_list"])[:SAMPLE_SIZE]
        if "observed_value" in res:
            failure["observed_value"] = res["observed_value"]
        if res.get("details"):
            failure["details"] = res["details"]
        if exc.get("raised_exception"):
            failure["error"] = exc.get("exception_message")
        failures.append(json_safe(failure))
    order = {name: i for i, name in enumerate(spec.column_names)}
    failures.sort(key=lambda f: order.get(f["column"], -1))
    return failures


def _as_spec_values(values: list, column: str | None, spec: DatasetSpec) -> list:
    """Show ints of int columns as ints (GX saw them as float64 when the column had nulls)."""
    if column in spec.column_names and spec.column(column).dtype == "int":
        return [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
    return values


def new_validation_id(spec: DatasetSpec) -> str:
    """``<dataset>-<UTC time>-<random>``: unique per run, sortable by time, safe as a file name."""
    return f"{spec.name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def _frame_for_gx(df: pd.DataFrame) -> pd.DataFrame:
    """The frame GX sees: nullable ints as numpy numbers and all blocks consolidated.

    GX vectorises ``between`` only for numpy int/float columns (an ``Int64`` column goes through
    a Python function per value, ~1 s per million), and it filters the whole frame once per
    column metric, so an unconsolidated frame is re-consolidated dozens of times. Int64 becomes
    int64 when it has no missing values, else float64 (exact up to 2**53).
    """
    cast = {}
    for name, dtype in df.dtypes.items():
        if isinstance(dtype, pd.Int64Dtype | pd.Float64Dtype):
            cast[name] = "int64" if not df[name].hasnans else "float64"
    out = df.astype(cast) if cast else df
    is_consolidated = getattr(getattr(out, "_mgr", None), "is_consolidated", None)  # pandas internals
    return out if is_consolidated is not None and is_consolidated() else out.copy()


def validate(df: pd.DataFrame, spec: DatasetSpec, *, batch: str) -> ValidationReport:
    """Run the spec's GX suite on a frame (normally from :func:`read_batch`); never raises on bad data."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    validation_id = new_validation_id(spec)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas(name=f"{spec.name}_batches").add_dataframe_asset(name=spec.name)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(
            name=validation_id,
            data=asset.add_batch_definition_whole_dataframe("whole_batch"),
            suite=context.suites.add(build_suite(spec)),
        )
    )
    result = definition.run(
        batch_parameters={"dataframe": _frame_for_gx(df)},
        # BASIC still gives counts, percentages and sample values; SUMMARY adds row indexes and
        # costs twice the time (two more full-frame filters per expectation): 4.9 s vs 2.3 s on 1M rows
        result_format={"result_format": "BASIC", "partial_unexpected_count": SAMPLE_SIZE},
    )
    gx_json = json_safe(result.to_json_dict())
    gx_json.setdefault("meta", {})["batch"] = batch
    gx_json["meta"]["mlops_validation_id"] = validation_id
    return ValidationReport(
        success=bool(result.success),
        validation_id=validation_id,
        batch=batch,
        rows=len(df),
        failures=_failures_from(gx_json, spec),
        gx_result=gx_json,
        dataset=spec.name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        statistics=gx_json.get("statistics", {}),
        data_fingerprint=(gx_json["meta"].get("batch_markers") or {}).get("pandas_data_fingerprint"),
    )


def check_batch(
    path: Path,
    spec: DatasetSpec,
    *,
    max_bytes: int | None = None,
    max_rows: int | None = None,
) -> tuple[pd.DataFrame, ValidationReport]:
    """Read and validate a batch; a failed suite raises ``BatchRejected(kind="expectations_failed")``.

    The rejection carries the report both as ``.report`` and as JSON in ``.details["report"]``, so
    the caller can :func:`save_validation` and :func:`quarantine` it.
    """
    path = Path(path)
    df = read_batch(path, spec, max_bytes=max_bytes, max_rows=max_rows)
    report = validate(df, spec, batch=path.name)
    if not report.success:
        raise BatchRejected(
            path.name, "expectations_failed", report.summary(3),
            {"validation_id": report.validation_id, "report": report.to_json()}, report=report,
        )
    return df, report
