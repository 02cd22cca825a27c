"""A batch's verdict: the rejection (:class:`BatchRejected`) and the validation report (JSON, Markdown)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from include.jsonsafe import json_safe


class BatchRejected(Exception):
    """A batch that must not enter the loop; ``kind`` says why in one machine-readable word.

    kinds: empty_file, header_only, wrong_delimiter, missing_columns, unexpected_columns,
    malformed_csv, wrong_dtype, invalid_utf8, corrupt_gzip, too_large, expectations_failed.
    """

    def __init__(
        self,
        batch: str,
        kind: str,
        message: str,
        details: dict | None = None,
        *,
        report: ValidationReport | None = None,
    ) -> None:
        super().__init__(message)
        self.batch = batch
        self.kind = kind
        self.message = message
        self.details = json_safe(details or {})
        self.report = report

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable despite the keyword-rich constructor (multiprocessing, retries)
        return (_rebuild_rejection, (self.batch, self.kind, self.message, self.details, self.report))

    def to_json(self) -> dict:
        out = {"batch": self.batch, "kind": self.kind, "message": self.message, "details": self.details}
        if self.report is not None:
            out["validation_id"] = self.report.validation_id
            out["failures"] = self.report.failures
        return out


def _rebuild_rejection(batch, kind, message, details, report) -> BatchRejected:
    return BatchRejected(batch, kind, message, details, report=report)


def _reject(batch: str, kind: str, problem: str, **details: Any) -> BatchRejected:
    return BatchRejected(batch, kind, f"batch {batch!r} rejected ({kind}): {problem}", details)


@dataclass
class ValidationReport:
    success: bool
    validation_id: str
    batch: str
    rows: int
    failures: list[dict] = field(default_factory=list)
    gx_result: dict = field(default_factory=dict, repr=False)
    dataset: str = ""
    created_at: str = ""
    statistics: dict = field(default_factory=dict)
    data_fingerprint: str | None = None

    def to_json(self) -> dict:
        return {
            "validation_id": self.validation_id,
            "dataset": self.dataset,
            "batch": self.batch,
            "success": self.success,
            "rows": self.rows,
            "created_at": self.created_at,
            "statistics": self.statistics,
            "data_fingerprint": self.data_fingerprint,
            "failures": self.failures,
            "gx_result": self.gx_result,
        }

    @classmethod
    def from_json(cls, data: dict) -> ValidationReport:
        return cls(
            success=data["success"], validation_id=data["validation_id"], batch=data["batch"],
            rows=data["rows"], failures=data.get("failures", []), gx_result=data.get("gx_result", {}),
            dataset=data.get("dataset", ""), created_at=data.get("created_at", ""),
            statistics=data.get("statistics", {}), data_fingerprint=data.get("data_fingerprint"),
        )

    def summary(self, limit: int = 3) -> str:
        """One sentence: the verdict and the first ``limit`` failures."""
        if self.success:
            return f"batch {self.batch!r} passed {self.statistics.get('evaluated_expectations', '?')} expectations ({self.rows:,} rows)"
        parts = [_describe_failure(f) for f in self.failures[:limit]]
        more = f"; and {len(self.failures) - limit} more" if len(self.failures) > limit else ""
        return (f"batch {self.batch!r} failed {len(self.failures)} of "
                f"{self.statistics.get('evaluated_expectations', '?')} expectations: " + "; ".join(parts) + more)

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        lines = [
            f"# Validation of `{self.batch}`: {verdict}",
            "",
            f"- dataset: `{self.dataset}`",
            f"- validation id: `{self.validation_id}`",
            f"- rows: {self.rows:,}",
            f"- time: {self.created_at}",
            f"- expectations: {self.statistics.get('successful_expectations', '?')} of "
            f"{self.statistics.get('evaluated_expectations', '?')} passed",
            "",
        ]
        if self.failures:
            lines += [
                "| expectation | column | unexpected | % | sample values |",
                "|---|---|---:|---:|---|",
            ]
            for f in self.failures:
                count, pct = f.get("unexpected_count"), f.get("unexpected_percent")
                count_text = "" if count is None else f"{count:,}"
                pct_text = "" if pct is None else f"{pct:.2f}"
                lines.append(
                    f"| {f['expectation']} | {f.get('column') or '(table)'} | {count_text} | {pct_text} | "
                    f"{_md_escape(_samples_text(f))} |"
                )
        else:
            lines.append("All expectations passed.")
        return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _samples_text(f: dict) -> str:
    if f.get("error"):
        return f"error: {f['error']}"
    if f.get("observed_value") is not None:
        return f"observed: {json.dumps(f['observed_value'])[:300]}"
    if f["expectation"] == "expect_column_values_to_not_be_null":
        rows = f.get("sample_rows") or []
        return f"null at rows {rows}" if rows else "(nulls)"
    return json.dumps(f.get("sample_values") or [])[:300]


def _describe_failure(f: dict) -> str:
    col = f.get("column") or "table"
    kw = f.get("kwargs", {})
    exp = f["expectation"]
    if f.get("error"):
        return f"{col}: {exp} raised {f['error']}"
    if exp == "expect_column_values_to_not_be_null":
        mostly = kw.get("mostly")
        limit = f", over the {1 - mostly:.0%} allowed" if mostly else ", and the column is not nullable"
        return f"{col}: {f.get('unexpected_count', 0):,} null(s) ({f.get('unexpected_percent') or 0:.1f}%{limit})"
    if exp == "expect_column_values_to_be_between":
        return (f"{col}: {f.get('unexpected_count', 0):,} value(s) {_bounds(kw.get('min_value'), kw.get('max_value'))}, "
                f"e.g. {f.get('sample_values', [])[:5]}")
    if exp == "expect_column_values_to_be_in_set":
        return (f"{col}: {f.get('unexpected_count', 0):,} value(s) not in {kw.get('value_set')}, "
                f"e.g. {f.get('sample_values', [])[:5]}")
    if exp == "expect_column_values_to_be_unique":
        return f"{col}: {f.get('unexpected_count', 0):,} duplicated key value(s), e.g. {f.get('sample_values', [])[:5]}"
    if f.get("observed_value") is not None:
        return f"{col}: {exp} (observed {json.dumps(f['observed_value'])[:200]})"
    return f"{col}: {exp} ({f.get('unexpected_count')} unexpected, e.g. {f.get('sample_values', [])[:5]})"


def _num(x: Any) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _bounds(lo: Any, hi: Any) -> str:
    if lo is None:
        return f"above {_num(hi)}"
    if hi is None:
        return f"below {_num(lo)}"
    return f"outside [{_num(lo)}, {_num(hi)}]"
