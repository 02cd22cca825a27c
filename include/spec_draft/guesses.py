"""The drafter's guesses from the column profiles: key, timestamp, target and task, and the
widened ranges of numeric columns. Each guess comes with its reason, or a DraftError saying
what to change in the CSV when no column fits."""

from __future__ import annotations

import math
import re

from include.spec_draft.errors import DraftError
from include.spec_draft.profile import SLICE_MAX_VALUES, ColumnProfile, examples

# Half the observed span on each side: the next batch's extremes of a skewed column (prices,
# durations) often beat this file's by more than 10%, and a range exists to catch broken data
# (sign flips, unit changes, sentinels like 99999), not to re-state the sample.
RANGE_MARGIN = 0.5
_ID_WORDS = {"id", "key", "uuid", "guid", "pk"}
_TIME_WORDS = {"ts", "time", "timestamp", "date", "datetime", "created", "updated", "at", "on", "day", "when"}
_TARGET_NAMES = ("target", "label", "y", "class", "outcome", "result")


def _words(name: str) -> list[str]:
    """``sessionID``, ``session_id`` and ``Session ID`` all give ["session", "id"]."""
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]


def id_like(name: str) -> bool:
    w = _words(name)
    return bool(w) and (w[0] in _ID_WORDS or w[-1] in _ID_WORDS)


def _time_like(name: str) -> bool:
    return bool(set(_words(name)) & _TIME_WORDS)


def nice_bounds(lo: float, hi: float, dtype: str) -> tuple[float, float]:
    span = hi - lo
    margin = RANGE_MARGIN * (span if span > 0 else max(abs(hi), 1.0))
    new_lo, new_hi = lo - margin, hi + margin
    if lo >= 0:
        new_lo = max(new_lo, 0.0)
    if dtype == "int":
        return float(math.floor(new_lo)), float(math.ceil(new_hi))
    # round outwards to 3 significant digits of the span: readable, and still containing the data
    step = 10 ** (math.floor(math.log10(max(new_hi - new_lo, 1e-12))) - 2)
    return round(math.floor(new_lo / step) * step, 12), round(math.ceil(new_hi / step) * step, 12)


def as_dtype_number(x: float, dtype: str) -> int | float:
    return int(x) if dtype == "int" else float(x)


def pick_key(profiles: dict[str, ColumnProfile], exclude: set[str]) -> tuple[str | None, str]:
    candidates = [p for p in profiles.values()
                  if p.unique and p.dtype in ("int", "string") and p.name not in exclude]
    if not candidates:
        return None, ""
    named = [p for p in candidates if id_like(p.name)]
    if named:
        p = sorted(named, key=lambda q: q.dtype != "string")[0]
        return p.name, f"unique and non-null in all {p.n:,} rows, and its name looks like an id"
    p = sorted(candidates, key=lambda q: q.dtype != "string")[0]
    return p.name, (f"guess: unique and non-null in all {p.n:,} rows, but its name does not look like an id; "
                    "check that it identifies a row in every batch")


def no_key_message(profiles: dict[str, ColumnProfile], rows: int) -> str:
    near = sorted((p for p in profiles.values() if p.dtype in ("int", "string") and p.n_distinct > 1),
                  key=lambda p: -(p.n_distinct - p.n_null))
    hint = ""
    if near:
        p = near[0]
        dup = p.n - p.n_null - p.n_distinct
        hint = (f" (nearest: {p.name!r} has {p.n_distinct:,} distinct values"
                + (f", {dup:,} repeated" if dup else "") + (f", {p.n_null:,} missing" if p.n_null else "") + ")")
    return (f"no key: no int or string column is unique and non-null in all {rows:,} rows{hint}. The spec needs a "
            "key (ingest checks it is unique; batches are merged and late labels joined on it). Add an id "
            "column to the CSV, e.g. a row number that keeps counting across batches, or a hash of the "
            "columns that identify a row")


def pick_timestamp(profiles: dict[str, ColumnProfile]) -> tuple[str | None, str]:
    dts = [p for p in profiles.values() if p.dtype == "datetime"]
    usable = [p for p in dts if p.n_null == 0]
    if not usable:
        if dts:
            return None, (f"none: datetime column(s) {[p.name for p in dts]} have missing values, so they cannot "
                          "order the train/holdout split; the split is a seeded shuffle")
        return None, ("none: no column is an ISO 8601 date/time; the train/holdout split is a seeded shuffle "
                      "and training windows (window_days) are unavailable")
    named = [p for p in usable if _time_like(p.name)]
    p = (named or usable)[0]
    why = "non-null ISO 8601 date/time" + (", named like a time" if named else "")
    if len(usable) > 1:
        why += f"; other datetime columns: {[q.name for q in usable if q is not p]}"
    return p.name, why + "; the holdout is the newest rows by this column"


def _target_problem(p: ColumnProfile) -> str | None:
    if p.dtype == "empty":
        return "every value is missing"
    if p.dtype == "datetime":
        return "it is a date/time"
    if p.unique and id_like(p.name):
        return "it is unique per row and named like an id"
    if p.n_null:
        return f"{p.n_null:,} value(s) are missing; training needs a label on every row (drop unlabelled rows)"
    if p.n_distinct < 2:
        return f"it has a single value ({p.values[0] if p.values else '?'!r}); there is nothing to learn"
    if p.dtype not in ("int", "float") and p.n_distinct > 2:
        return (f"it is text with {p.n_distinct:,} distinct values; training supports binary classification "
                "(two labels) or a numeric regression target")
    return None


def pick_target(profiles: dict[str, ColumnProfile], given: str | None, order: list[str]) -> tuple[str, str]:
    if given is not None:
        if given not in profiles:
            raise DraftError(f"--target {given!r} is not a column; columns: {order}")
        problem = _target_problem(profiles[given])
        if problem:
            raise DraftError(f"no usable target: --target {given!r}: {problem}")
        return given, "given with --target"
    by_name = {c.lower(): c for c in order}
    tried = []
    for n in _TARGET_NAMES:
        if n in by_name:
            c = by_name[n]
            problem = _target_problem(profiles[c])
            if problem is None:
                return c, f"guess: named like a label ({c!r}); pass --target to choose another"
            tried.append(f"{c!r}: {problem}")
    last = order[-1]
    problem = _target_problem(profiles[last])
    if problem is None:
        return last, "guess: the last column; pass --target to choose another"
    tried.append(f"{last!r} (last column): {problem}")
    raise DraftError("no usable target: " + "; ".join(tried) + ". Pass --target COLUMN")


def pick_task(p: ColumnProfile) -> tuple[str, str]:
    if p.n_distinct == 2:
        return "classification", f"the target has two values ({examples(p.values or [], 2)})"
    if p.dtype in ("int", "float"):
        why = f"the target is numeric with {p.n_distinct:,} distinct values"
        if p.dtype == "int" and p.n_distinct <= SLICE_MAX_VALUES:
            why += " (few, but training supports binary classification only)"
        return "regression", why
    raise AssertionError(p)  # _target_problem rules the rest out
