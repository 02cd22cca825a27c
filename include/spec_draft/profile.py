"""One column's profile: the dtype ingest would give it, nulls, distinct values, range, and the
reason for the dtype in words (the drafter prints it next to every guess)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

CATEGORY_MAX_VALUES = 50
SLICE_MAX_VALUES = 10
_DATE_SAMPLE = 500


@dataclass
class ColumnProfile:
    name: str
    dtype: str
    n: int
    n_null: int
    n_distinct: int
    values: list[str] = field(default_factory=list)  # distinct raw values, when few
    lo: float | None = None
    hi: float | None = None
    unique: bool = False
    why: str = ""
    # the column's text as ingest will see it, for guessing the target and key
    raw: pd.Series | None = field(default=None, repr=False)

    @property
    def null_share(self) -> float:
        return self.n_null / self.n if self.n else 0.0


def _iso_datetimes(s: pd.Series) -> pd.Series:
    # the reader's own parser, so "datetime" here means exactly "ingest will parse it"
    from include.validation.reader import _datetimes

    return _datetimes(s)


def _any_datetimes(s: pd.Series) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format" is the point of format="mixed"
        return pd.to_datetime(s, format="mixed", errors="coerce", utc=True)


def examples(values, k: int = 3) -> str:
    return ", ".join(repr(v) for v in list(values)[:k])


def profile_column(name: str, s: pd.Series) -> ColumnProfile:
    n = len(s)
    present = s.dropna()
    n_null = n - len(present)
    distinct = pd.unique(present)
    p = ColumnProfile(name=name, dtype="string", n=n, n_null=n_null, n_distinct=len(distinct),
                 unique=n_null == 0 and len(distinct) == n, raw=s)
    if len(distinct) <= SLICE_MAX_VALUES:
        p.values = sorted(str(v) for v in distinct)
    if present.empty:
        p.dtype, p.why = "empty", "every value is missing"
        return p

    # judged on the distinct values: an id column has as many as rows, a category a handful
    uniq = pd.Series(distinct, dtype=object)
    values = pd.to_numeric(uniq, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    finite = np.isfinite(values)
    text = uniq[~finite]
    share_num = 1.0 - float(present.isin(text).mean()) if len(text) else 1.0
    zeros = uniq[finite & uniq.str.fullmatch(r"[+-]?0\d+").to_numpy(dtype=bool)]
    leading_zero = not zeros.empty
    if share_num == 1.0 and not leading_zero:
        integral = bool(np.all(values % 1 == 0) and np.all(np.abs(values) < 2**53))
        p.dtype = "int" if integral else "float"
        p.lo, p.hi = float(values.min()), float(values.max())
        p.why = "whole numbers" if integral else "numbers"
        if p.values:
            p.values.sort(key=float)
        return p

    # a sample first: most text columns fail on it, and the full parse is the slow part
    if _iso_datetimes(present.iloc[:_DATE_SAMPLE]).notna().all() and _iso_datetimes(present).notna().all():
        p.dtype, p.why = "datetime", f"ISO 8601 dates/times, e.g. {examples(present, 1)}"
        p.lo, p.hi = None, None
        return p

    kind = _closed_or_free(p)
    if share_num >= 0.5 and not leading_zero:
        n_text = int(present.isin(text).sum())
        p.why = (f"mixed: {share_num:.0%} numbers but {n_text:,} text value(s) such as "
                 f"{examples(text)}; ingest would reject those in a number column, so text "
                 f"(clean them to make it numeric); {kind}")
    elif leading_zero and share_num == 1.0:
        p.why = f"digits with leading zeros (e.g. {examples(zeros, 2)}): codes, kept as text; {kind}"
    else:
        # only to explain the choice, so a sample will do (dateutil parses ~5k values a second)
        some = pd.Series(distinct[:_DATE_SAMPLE], dtype=object)
        if some.str.contains(r"\d").all() and _any_datetimes(some).notna().mean() >= 0.95:
            p.why = (f"dates, but not ISO 8601 (e.g. {examples(pd.unique(present), 2)}); ingest parses ISO 8601 "
                     "only, so text (write them as 2026-03-01T12:00:00Z to make it a datetime or the "
                     f"timestamp); {kind}")
        else:
            p.why = kind
    p.dtype = "category" if kind.startswith("a closed set") else "string"
    if p.dtype == "category":
        p.values = sorted(str(v) for v in distinct)
    return p


def _closed_or_free(p: ColumnProfile) -> str:
    present = p.n - p.n_null
    if p.n_distinct <= CATEGORY_MAX_VALUES and p.n_distinct * 2 <= present:
        return (f"a closed set: {p.n_distinct} distinct value(s) in {present:,} rows; a batch with a new "
                "value is rejected, so add any you expect")
    return f"free text: {p.n_distinct:,} distinct values in {present:,} rows"
