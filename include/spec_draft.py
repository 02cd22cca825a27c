"""Draft a dataset spec from a CSV: ``mlops-spec draft data.csv --name NAME``.

The draft is a starting point for review, not a verdict: ranges, category sets and nullability
describe the rows seen, and the next batch may legitimately go beyond them. Every guess is printed
with its reason (and repeated as a comment at the top of the YAML) so the reviewer knows what to
check. What the drafter decides, and why:

* **dtypes** from the raw text, the way ingest will read it (``include.validation.read_batch``:
  pandas' default NA strings, numbers as ``pd.to_numeric``, datetimes as ISO 8601 only). A column
  whose values do not *all* parse is text: a spec saying ``int`` would reject this very file.
  Dates in other formats (``03/01/2026``, ``1 Mar 2026``) are recognised and reported, but drafted
  as ``string`` for the same reason.
* **category** vs **string**: at most ``CATEGORY_MAX_VALUES`` distinct values, each seen at least
  twice on average, make a closed set; anything else is free text (the model one-hot encodes its
  most frequent values only).
* **ranges**: observed min/max widened by ``RANGE_MARGIN`` (half) of the observed span on each
  side, so the next batch's larger extremes are not rejected, and never below 0 when no negative
  value was seen; 0/1 flags and classification targets keep their exact bounds; the key gets none.
* **key**: a unique, non-null int or string column, preferring id-like names. The spec requires
  one (batches are merged and late labels joined on it) and ingest checks its uniqueness, so with
  no such column the drafter stops and says so rather than inventing one.
* **timestamp**: a non-null ISO 8601 datetime column, preferring time-like names.
* **target**: ``--target``, else a column named like a label (target, label, y, ...), else the last
  column; **task**: two distinct values is classification (training supports binary only), a
  numeric target with more is regression.
* **slices**: up to ``MAX_SLICES`` categorical features with 2 to ``SLICE_MAX_VALUES`` values.
* **model_name**: ``<name>_model``.

Errors that no guess can fix (empty file, no rows, an all-null column, no usable target, no key)
exit with status 2 and say what to change in the CSV.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from include.spec import MODEL_NAME_RE, default_model_name, parse_spec

CATEGORY_MAX_VALUES = 50
# Half the observed span on each side: the next batch's extremes of a skewed column (prices,
# durations) often beat this file's by more than 10%, and a range exists to catch broken data
# (sign flips, unit changes, sentinels like 99999), not to re-state the sample.
RANGE_MARGIN = 0.5
MAX_SLICES = 2
SLICE_MAX_VALUES = 10
#: Rows profiled at most; a bigger file is profiled on its first rows (and the output says so).
MAX_ROWS = 1_000_000
_SNIFF_BYTES = 64 * 1024
_DATE_SAMPLE = 500
_DELIMITERS = ",;\t|"
# cp1252 before latin-1: it is what "not UTF-8" CSVs from Excel on Windows are, and it decodes the
# same letters as latin-1 plus the quotes and dashes latin-1 puts in control-code slots.
_ENCODINGS = ("utf-8-sig", "cp1252", "latin-1")
_ID_WORDS = {"id", "key", "uuid", "guid", "pk"}
_TIME_WORDS = {"ts", "time", "timestamp", "date", "datetime", "created", "updated", "at", "on", "day", "when"}
_TARGET_NAMES = ("target", "label", "y", "class", "outcome", "result")
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class DraftError(Exception):
    """The CSV cannot be turned into a spec as it is; the message says what to change."""


@dataclass
class _Profile:
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


@dataclass
class Draft:
    spec: dict
    decisions: list[str]
    notes: list[str]
    source: Path
    encoding: str
    delimiter: str
    rows: int

    def to_yaml(self) -> str:
        return render_yaml(self)


# ------------------------------------------------------------------------------------------ read


def _decode(data: bytes) -> tuple[str, str]:
    for enc in _ENCODINGS:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def read_csv(path: Path, max_rows: int = MAX_ROWS) -> tuple[pd.DataFrame, dict]:
    """Every column as text (missing values as NaN, as ingest reads them) plus how the file was read."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if not data.strip():
        raise DraftError(f"{path} is empty: there is no header and no rows to draft a spec from")
    text, encoding = _decode(data)
    sample = text[:_SNIFF_BYTES]
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:  # one column, or too little text to tell: a comma is what ingest expects anyway
        delimiter = ","
    try:
        df = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=True, index_col=False,
                         nrows=max_rows + 1)
    except pd.errors.EmptyDataError as err:
        raise DraftError(f"{path} has no header and no rows") from err
    except pd.errors.ParserError as err:
        raise DraftError(f"{path} does not parse as CSV with delimiter {delimiter!r}: {err}") from err
    header = [str(c) for c in df.columns]
    numeric_header = [c for c in header if _parses_as_number(c)]
    if numeric_header and not csv.Sniffer().has_header(sample):
        raise DraftError(
            f"{path}: the first row looks like data, not a header (column names {numeric_header[:3]} are "
            "numbers); ingest takes the first row as the column names, so add a header row"
        )
    dupes = sorted({c.rsplit(".", 1)[0] for c in header if re.search(r"\.\d+$", c) and c.rsplit(".", 1)[0] in header})
    if dupes:
        raise DraftError(f"{path}: column name(s) {dupes} appear more than once in the header; rename them")
    if len(df) == 0:
        raise DraftError(f"{path} has a header ({len(header)} columns) but no data rows")
    truncated = len(df) > max_rows
    df = df.iloc[:max_rows]
    return df, {"encoding": encoding, "delimiter": delimiter, "truncated": truncated}


def _words(name: str) -> list[str]:
    """``sessionID``, ``session_id`` and ``Session ID`` all give ["session", "id"]."""
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)]


def _id_like(name: str) -> bool:
    w = _words(name)
    return bool(w) and (w[0] in _ID_WORDS or w[-1] in _ID_WORDS)


def _time_like(name: str) -> bool:
    return bool(set(_words(name)) & _TIME_WORDS)


def _parses_as_number(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------- profile


def _iso_datetimes(s: pd.Series) -> pd.Series:
    # the reader's own parser, so "datetime" here means exactly "ingest will parse it"
    from include.validation.reader import _datetimes

    return _datetimes(s)


def _any_datetimes(s: pd.Series) -> pd.Series:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format" is the point of format="mixed"
        return pd.to_datetime(s, format="mixed", errors="coerce", utc=True)


def _examples(values, k: int = 3) -> str:
    return ", ".join(repr(v) for v in list(values)[:k])


def profile_column(name: str, s: pd.Series) -> _Profile:
    n = len(s)
    present = s.dropna()
    n_null = n - len(present)
    distinct = pd.unique(present)
    p = _Profile(name=name, dtype="string", n=n, n_null=n_null, n_distinct=len(distinct),
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
        p.dtype, p.why = "datetime", f"ISO 8601 dates/times, e.g. {_examples(present, 1)}"
        p.lo, p.hi = None, None
        return p

    kind = _closed_or_free(p)
    if share_num >= 0.5 and not leading_zero:
        n_text = int(present.isin(text).sum())
        p.why = (f"mixed: {share_num:.0%} numbers but {n_text:,} text value(s) such as "
                 f"{_examples(text)}; ingest would reject those in a number column, so text "
                 f"(clean them to make it numeric); {kind}")
    elif leading_zero and share_num == 1.0:
        p.why = f"digits with leading zeros (e.g. {_examples(zeros, 2)}): codes, kept as text; {kind}"
    else:
        # only to explain the choice, so a sample will do (dateutil parses ~5k values a second)
        some = pd.Series(distinct[:_DATE_SAMPLE], dtype=object)
        if some.str.contains(r"\d").all() and _any_datetimes(some).notna().mean() >= 0.95:
            p.why = (f"dates, but not ISO 8601 (e.g. {_examples(pd.unique(present), 2)}); ingest parses ISO 8601 "
                     "only, so text (write them as 2026-03-01T12:00:00Z to make it a datetime or the "
                     f"timestamp); {kind}")
        else:
            p.why = kind
    p.dtype = "category" if kind.startswith("a closed set") else "string"
    if p.dtype == "category":
        p.values = sorted(str(v) for v in distinct)
    return p


def _closed_or_free(p: _Profile) -> str:
    present = p.n - p.n_null
    if p.n_distinct <= CATEGORY_MAX_VALUES and p.n_distinct * 2 <= present:
        return (f"a closed set: {p.n_distinct} distinct value(s) in {present:,} rows; a batch with a new "
                "value is rejected, so add any you expect")
    return f"free text: {p.n_distinct:,} distinct values in {present:,} rows"


# ------------------------------------------------------------------------------------------ guess


def _nice_bounds(lo: float, hi: float, dtype: str) -> tuple[float, float]:
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


def _num(x: float, dtype: str) -> int | float:
    return int(x) if dtype == "int" else float(x)


def _pick_key(profiles: dict[str, _Profile], exclude: set[str]) -> tuple[str | None, str]:
    candidates = [p for p in profiles.values()
                  if p.unique and p.dtype in ("int", "string") and p.name not in exclude]
    if not candidates:
        return None, ""
    named = [p for p in candidates if _id_like(p.name)]
    if named:
        p = sorted(named, key=lambda q: q.dtype != "string")[0]
        return p.name, f"unique and non-null in all {p.n:,} rows, and its name looks like an id"
    p = sorted(candidates, key=lambda q: q.dtype != "string")[0]
    return p.name, (f"guess: unique and non-null in all {p.n:,} rows, but its name does not look like an id; "
                    "check that it identifies a row in every batch")


def _no_key_message(profiles: dict[str, _Profile], rows: int) -> str:
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


def _pick_timestamp(profiles: dict[str, _Profile]) -> tuple[str | None, str]:
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


def _target_problem(p: _Profile) -> str | None:
    if p.dtype == "empty":
        return "every value is missing"
    if p.dtype == "datetime":
        return "it is a date/time"
    if p.unique and _id_like(p.name):
        return "it is unique per row and named like an id"
    if p.n_null:
        return f"{p.n_null:,} value(s) are missing; training needs a label on every row (drop unlabelled rows)"
    if p.n_distinct < 2:
        return f"it has a single value ({p.values[0] if p.values else '?'!r}); there is nothing to learn"
    if p.dtype not in ("int", "float") and p.n_distinct > 2:
        return (f"it is text with {p.n_distinct:,} distinct values; training supports binary classification "
                "(two labels) or a numeric regression target")
    return None


def _pick_target(profiles: dict[str, _Profile], given: str | None, order: list[str]) -> tuple[str, str]:
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


def _task(p: _Profile) -> tuple[str, str]:
    if p.n_distinct == 2:
        return "classification", f"the target has two values ({_examples(p.values or [], 2)})"
    if p.dtype in ("int", "float"):
        why = f"the target is numeric with {p.n_distinct:,} distinct values"
        if p.dtype == "int" and p.n_distinct <= SLICE_MAX_VALUES:
            why += " (few, but training supports binary classification only)"
        return "regression", why
    raise AssertionError(p)  # _target_problem rules the rest out


def draft_spec(path: Path, name: str, *, target: str | None = None, max_rows: int = MAX_ROWS) -> Draft:
    """Profile ``path`` and return the spec as a dict with one reason per decision; raise DraftError."""
    if not _DATASET_NAME.match(name):
        raise DraftError(f"--name {name!r}: use letters, digits, '_' or '-' (it names files, the landing "
                         "prefix and the registered model)")
    path = Path(path)
    df, how = read_csv(path, max_rows=max_rows)
    order = [str(c) for c in df.columns]
    rows = len(df)
    profiles = {c: profile_column(c, df[c]) for c in order}
    decisions: list[str] = []
    notes: list[str] = []

    enc = "UTF-8" if how["encoding"] == "utf-8-sig" else how["encoding"]
    shown = {"\t": "tab", ",": "comma"}.get(how["delimiter"], repr(how["delimiter"]))
    decisions.append(f"read: {rows:,} rows x {len(order)} columns, {enc}, {shown}-delimited, header row"
                     + (f" (first {max_rows:,} rows only)" if how["truncated"] else ""))
    if how["encoding"] != "utf-8-sig" or how["delimiter"] != ",":
        notes.append(
            f"ingest reads comma-separated UTF-8 only: convert each batch before landing it, e.g. "
            f"python -c \"import pandas as pd; pd.read_csv('{path.name}', sep={how['delimiter']!r}, "
            f"encoding='{how['encoding']}', dtype=str, keep_default_na=False).to_csv('{path.stem}.utf8.csv', "
            "index=False)\""
        )

    empty = [c for c in order if profiles[c].dtype == "empty"]
    if empty:
        raise DraftError(
            f"column(s) {empty} are entirely empty in all {rows:,} rows: there is no dtype to infer, and ingest "
            "would reject every batch either way (it requires exactly the spec's columns, and a nullable "
            "column may be at most 10% missing). Drop the column(s) from the CSV, or fill them"
        )

    target_col, why = _pick_target(profiles, target, order)
    decisions.append(f"target: {target_col} ({why})")
    task, why = _task(profiles[target_col])
    decisions.append(f"task: {task} ({why})")

    ts_col, why = _pick_timestamp({c: p for c, p in profiles.items() if c != target_col})
    decisions.append(f"timestamp: {ts_col or '-'} ({why})")

    key, why = _pick_key(profiles, exclude={target_col, ts_col} - {None})
    if key is None:
        raise DraftError(_no_key_message({c: p for c, p in profiles.items() if c not in (target_col, ts_col)},
                                         rows))
    decisions.append(f"key: {key} ({why})")

    from include.validation import NULLABLE_MOSTLY

    columns: dict[str, dict] = {}
    for c in order:
        p = profiles[c]
        body: dict = {"dtype": p.dtype}
        role = {key: "key", target_col: "target", ts_col: "timestamp"}.get(c)
        if role == "target" and task == "classification" and p.dtype not in ("int", "float"):
            body["dtype"] = "category"
            p.values = sorted(str(v) for v in pd.unique(p.raw.dropna()))
        if body["dtype"] == "category":
            body["values"] = p.values
        line = f"column {c}: {body['dtype']}"
        if p.dtype in ("int", "float") and role != "key":
            exact = (role == "target" and task == "classification") or (p.lo, p.hi) == (0.0, 1.0)
            if exact:
                lo, hi = p.lo, p.hi
                rng = f"[{_num(lo, p.dtype)}, {_num(hi, p.dtype)}], exactly as observed"
            else:
                lo, hi = _nice_bounds(p.lo, p.hi, p.dtype)
                rng = (f"[{_num(lo, p.dtype)}, {_num(hi, p.dtype)}]: observed [{_num(p.lo, p.dtype)}, "
                       f"{_num(p.hi, p.dtype)}] widened by {RANGE_MARGIN:.0%} of the span on each side"
                       + (", not below 0 (no negative values seen)" if p.lo >= 0 and lo == 0 else ""))
            body["min"], body["max"] = _num(lo, p.dtype), _num(hi, p.dtype)
            line += f" in {rng}"
        if p.n_null:
            body["nullable"] = True
            line += f"; nullable ({p.n_null:,} of {rows:,} missing)"
            if p.null_share > 1 - NULLABLE_MOSTLY:
                notes.append(
                    f"{c!r} is {p.null_share:.0%} missing, but ingest rejects a batch in which a nullable column is "
                    f"more than {1 - NULLABLE_MOSTLY:.0%} missing (a NaN-flood guard): this file would be rejected; "
                    "fill the column or drop it"
                )
        else:
            body["nullable"] = False
        if role:
            line += f"; the {role}"
        decisions.append(line if role == "key" else f"{line} ({p.why})")
        columns[c] = body

    roles = {key, target_col, ts_col}
    features = [c for c in order if c not in roles]
    usable = [c for c in features if columns[c]["dtype"] != "datetime"]
    if not usable:
        raise DraftError(f"no feature columns: every column is the key, target or timestamp {sorted(roles - {None})}, "
                         "or a datetime the model does not use; the model needs inputs")
    ids = [c for c in features if profiles[c].unique and _id_like(c) and columns[c]["dtype"] == "string"]
    if ids:
        notes.append(f"{ids} are unique per row and named like ids: as model inputs they are noise; "
                     "consider dropping them from the CSV")
    unused = [c for c in features if columns[c]["dtype"] == "datetime"]
    if unused:
        notes.append(f"datetime column(s) {unused} are not model inputs (the pipeline uses numbers and categories)")

    slice_cols = [c for c in features if columns[c]["dtype"] == "category"
                  and 2 <= len(columns[c]["values"]) <= SLICE_MAX_VALUES]
    slice_cols = sorted(slice_cols, key=lambda c: len(columns[c]["values"]))[:MAX_SLICES]
    slice_cols = [c for c in features if c in slice_cols]
    decisions.append(
        f"slices: {slice_cols or '-'} ("
        + ("categorical features with 2 to 10 values; the gate checks the metric does not regress on each "
           "value, skipping values with too few holdout rows" if slice_cols
           else "no categorical feature with 2 to 10 values; the gate checks the whole holdout only") + ")"
    )
    model_name = default_model_name(name)
    decisions.append(f"model_name: {model_name} (the default <name>_model; change it before the first training)")

    spec = {
        "name": name,
        "description": f"Drafted by mlops-spec from {path.name} ({rows:,} rows).",
        "key": key,
        **({"timestamp": ts_col} if ts_col else {}),
        "target": target_col,
        "task": task,
        "slices": slice_cols,
        "model_name": model_name,
        "columns": columns,
    }
    assert MODEL_NAME_RE.match(model_name)
    parse_spec(spec)  # a draft the project cannot load is a bug here, not a user error
    return Draft(spec=spec, decisions=decisions, notes=notes, source=path, encoding=how["encoding"],
                 delimiter=how["delimiter"], rows=rows)


# ----------------------------------------------------------------------------------------- write


def render_yaml(draft: Draft) -> str:
    import yaml

    class _Flow(dict):
        pass

    class _Dumper(yaml.SafeDumper):
        pass

    _Dumper.add_representer(_Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data.items(),
                                                                          flow_style=True))

    def dump(obj) -> str:
        return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=10_000,
                         allow_unicode=True)

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [f"# Drafted by `mlops-spec draft {draft.source.name}` on {stamp}. Review every line before the",
            "# first ingest: ranges, category sets and nullability describe the rows seen, not the rules.",
            "#", *(f"# {d}" for d in draft.decisions), *(f"# NOTE: {n}" for n in draft.notes), ""]
    top = {k: v for k, v in draft.spec.items() if k != "columns"}
    cols = {c: _Flow(body) for c, body in draft.spec["columns"].items()}
    return "\n".join(head) + dump(top) + dump({"columns": cols})


def _default_out(name: str) -> Path:
    from include.config import settings

    return settings().specs_dir / f"{name}.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlops-spec", description="Dataset specs for the MLOps loop.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("draft", help="profile a CSV and write a spec to review",
                       description="Profile a CSV and write a dataset spec, printing every guess and why.")
    d.add_argument("csv", type=Path, help="a CSV (or CSV.gz) with a header row")
    d.add_argument("--name", required=True, help="dataset name (letters, digits, _ or -)")
    d.add_argument("--target", help="the label column (default: a guess, printed)")
    d.add_argument("--out", type=Path, help="where to write (default: <specs dir>/<name>.yaml)")
    d.add_argument("--force", action="store_true", help="overwrite an existing spec")
    args = parser.parse_args(argv)

    def fail(msg: str) -> int:
        print(f"mlops-spec: error: {msg}", file=sys.stderr)
        return 2

    if not args.csv.is_file():
        return fail(f"{args.csv}: no such file")
    out = args.out or _default_out(args.name)
    if out.exists() and not args.force:
        return fail(f"{out} exists; not overwriting it (pass --force to replace it, or --out PATH)")
    try:
        draft = draft_spec(args.csv, args.name, target=args.target)
    except DraftError as err:
        return fail(str(err))
    for line in draft.decisions:
        print(line)
    for note in draft.notes:
        print(f"NOTE: {note}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(draft.to_yaml())
    print(f"wrote {out}: review it, then land batches for dataset {args.name!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
