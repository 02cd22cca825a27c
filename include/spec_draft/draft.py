"""Profile a CSV and assemble the spec: one decision (with its reason) per key, column and slice,
and notes on what ingest would reject in this very file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from include.spec import MODEL_NAME_RE, default_model_name, parse_spec
from include.spec_draft.errors import DraftError
from include.spec_draft.guesses import (
    RANGE_MARGIN,
    as_dtype_number,
    id_like,
    nice_bounds,
    no_key_message,
    pick_key,
    pick_target,
    pick_task,
    pick_timestamp,
)
from include.spec_draft.profile import SLICE_MAX_VALUES, profile_column
from include.spec_draft.reading import MAX_ROWS, read_csv
from include.spec_draft.writing import render_yaml

MAX_SLICES = 2
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


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

    target_col, why = pick_target(profiles, target, order)
    decisions.append(f"target: {target_col} ({why})")
    task, why = pick_task(profiles[target_col])
    decisions.append(f"task: {task} ({why})")

    ts_col, why = pick_timestamp({c: p for c, p in profiles.items() if c != target_col})
    decisions.append(f"timestamp: {ts_col or '-'} ({why})")

    key, why = pick_key(profiles, exclude={target_col, ts_col} - {None})
    if key is None:
        raise DraftError(no_key_message({c: p for c, p in profiles.items() if c not in (target_col, ts_col)},
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
                rng = f"[{as_dtype_number(lo, p.dtype)}, {as_dtype_number(hi, p.dtype)}], exactly as observed"
            else:
                lo, hi = nice_bounds(p.lo, p.hi, p.dtype)
                rng = (f"[{as_dtype_number(lo, p.dtype)}, {as_dtype_number(hi, p.dtype)}]: observed [{as_dtype_number(p.lo, p.dtype)}, "
                       f"{as_dtype_number(p.hi, p.dtype)}] widened by {RANGE_MARGIN:.0%} of the span on each side"
                       + (", not below 0 (no negative values seen)" if p.lo >= 0 and lo == 0 else ""))
            body["min"], body["max"] = as_dtype_number(lo, p.dtype), as_dtype_number(hi, p.dtype)
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
    ids = [c for c in features if profiles[c].unique and id_like(c) and columns[c]["dtype"] == "string"]
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
