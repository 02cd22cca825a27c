"""Validate a chunk of rows with the online ``/predict`` rules, vectorised, and frame the good ones.

The verdict on a row is the serving schema's (:meth:`RequestSchema.check_row`, the pydantic model
``/predict`` validates ``{"instance": row}`` with), so a row is scored offline exactly when it would
be scored online, and a reject carries the same message as the online 422. Running pydantic on a
million rows costs ~10 s, so a vectorised pre-check built from the same schema (its published JSON
schema: types, bounds, enums, lengths, required fields) clears the rows that certainly pass; only
the rows it cannot clear (normally the bad ones) go through the row model one by one. The
pre-check may be stricter than the schema, never looser: what it flags and the model accepts is
scored all the same.

How file values become JSON-like values (the files are typed, JSON is not):
* missing values (null, and NaN in float columns, as pandas writes them) are JSON ``null``;
* an int feature stored as floats (pandas turns a nullable int column into float64) counts as the
  integer when the value is whole; a fractional value is rejected as online (``3.5`` for an int);
* CSV cells are read as text and cast per chunk, so one bad cell rejects its row, not the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from include.serving.app import RequestSchema, build_request_schema
from include.spec import DatasetSpec


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str  # integer | number | string | datetime | other
    nullable: bool
    required: bool
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    max_length: int | None = None


def _fields_from_schema(schema: RequestSchema) -> dict[str, _Field]:
    js = schema.row.model_json_schema()
    required = set(js.get("required", ()))
    out = {}
    for name, prop in js["properties"].items():
        options = prop.get("anyOf", [prop])
        nullable = any(o.get("type") == "null" for o in options)
        base = next((o for o in options if o.get("type") != "null"), {})
        kind = base.get("type", "other")
        if kind == "string" and base.get("format") == "date-time":
            kind = "datetime"
        enum = base.get("enum")
        out[name] = _Field(name, kind if kind in ("integer", "number", "string", "datetime") else "other",
                           nullable, name in required, base.get("minimum"), base.get("maximum"),
                           tuple(enum) if enum else None, base.get("maxLength"))
    return out


@dataclass
class Checked:
    """A chunk after validation: ``ok`` rows are scored; ``rejects`` are (row index, type, field, message)."""

    columns: dict[str, pa.Array]
    ok: np.ndarray
    rejects: list[tuple[int, str, str, str]]
    raw: dict[str, dict[int, Any]]  # values pydantic must see instead of the arrow value (unparsed text)


class ChunkValidator:
    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.schema = build_request_schema(spec)
        self.fields = _fields_from_schema(self.schema)
        # the target (labelled files) is a column of the dataset, not an unknown field
        self.ignored = set(spec.column_names) - set(self.fields)
        self.model_columns = [c for c in spec.feature_columns if c.dtype != "datetime"]

    def text_columns(self) -> set[str]:
        """Columns a CSV reader must keep as text: every request field (cast here, per chunk)."""
        return set(self.fields)

    # -- normalising file values -------------------------------------------------------------
    def _normalise(self, f: _Field, arr: pa.Array, suspect: np.ndarray, raw: dict[int, Any]) -> pa.Array:
        t = arr.type
        if f.kind in ("integer", "number"):
            if pa.types.is_string(t) or pa.types.is_large_string(t):  # CSV text
                try:
                    arr = pc.cast(arr, pa.int64() if f.kind == "integer" else pa.float64())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    text = arr.to_pandas()
                    nums = pd.to_numeric(text, errors="coerce")
                    unparsed = (nums.isna() & text.notna()).to_numpy()
                    for i in np.flatnonzero(unparsed):
                        raw[int(i)] = text.iat[int(i)]
                    suspect |= unparsed
                    arr = pa.array(nums.to_numpy(dtype=np.float64), type=pa.float64(), from_pandas=True)
            if pa.types.is_floating(t) or pa.types.is_floating(arr.type):
                arr = pc.cast(arr, pa.float64())
                arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, pa.float64()), arr)  # NaN = missing
                if f.kind == "integer":
                    whole = pc.fill_null(pc.equal(arr, pc.floor(arr)), True).to_numpy(zero_copy_only=False)
                    if not whole.all():
                        # the row model sees the fraction itself and rejects it with the online message
                        for i in np.flatnonzero(~whole):
                            raw.setdefault(int(i), arr[int(i)].as_py())
                        suspect |= ~whole
                        arr = pc.if_else(pa.array(whole), arr, pa.scalar(None, pa.float64()))
                    arr = pc.cast(arr, pa.int64())
        return arr

    def _check(self, f: _Field, arr: pa.Array | None, n: int, suspect: np.ndarray) -> None:
        if arr is None:
            if f.required:
                suspect[:] = True
            return
        null = arr.is_null().to_numpy(zero_copy_only=False)
        if not f.nullable:
            suspect |= null
        t = arr.type
        bad: Any = None
        if f.kind == "integer":
            if not pa.types.is_integer(t):
                suspect |= ~null
                return
            bad = _outside(arr, f)
        elif f.kind == "number":
            if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
                suspect |= ~null
                return
            num = pc.cast(arr, pa.float64())
            bad = pc.or_(pc.invert(pc.is_finite(num)), _outside(num, f))
        elif f.kind == "string":
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                suspect |= ~null
                return
            if f.enum is not None:
                bad = pc.invert(pc.is_in(arr, value_set=pa.array(f.enum)))
            elif f.max_length is not None:
                bad = pc.greater(pc.utf8_length(arr), f.max_length)
        elif f.kind == "datetime":
            if pa.types.is_timestamp(t) or pa.types.is_date(t):
                return
            if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
                suspect |= ~null
                return
            # text dates: the schema's own datetime parser decides, one call for the column
            bad = pa.array(_datetime_failures(self.schema, f.name, arr))
        else:
            suspect |= ~null
            return
        if bad is not None:
            suspect |= pc.fill_null(bad, False).to_numpy(zero_copy_only=False)

    # -- the chunk ---------------------------------------------------------------------------
    def check(self, batch: pa.RecordBatch | pa.Table) -> Checked:
        n = batch.num_rows
        suspect = np.zeros(n, dtype=bool)
        names = list(batch.schema.names)
        unknown = [c for c in names if c not in self.fields and c not in self.ignored]
        if unknown:
            suspect[:] = True
        columns: dict[str, pa.Array] = {}
        raw: dict[str, dict[int, Any]] = {}
        for name, f in self.fields.items():
            arr = None
            if name in names:
                col = batch.column(name)
                arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
                raw[name] = {}
                arr = self._normalise(f, arr, suspect, raw[name])
                columns[name] = arr
            self._check(f, arr, n, suspect)
        rejects = []
        ok = ~suspect
        present = [c for c in names if c not in self.ignored]
        for i in np.flatnonzero(suspect):
            i = int(i)
            row = {}
            for c in present:
                if c in raw and i in raw[c]:
                    row[c] = raw[c][i]
                else:
                    src = columns.get(c)
                    row[c] = (src if src is not None else batch.column(c))[i].as_py()
            verdict = self.schema.check_row(row)
            if verdict is None:
                ok[i] = True  # the pre-check was stricter than the schema: the schema decides
            else:
                rejects.append((i, *verdict))
        return Checked(columns, ok, rejects, raw)

    def frame(self, checked: Checked) -> pd.DataFrame:
        """The ``ok`` rows as the model server frames a request (same dtypes: same scores)."""
        idx = pa.array(np.flatnonzero(checked.ok))
        n = len(idx)
        data = {}
        for col in self.model_columns:
            arr = checked.columns.get(col.name)
            arr = pa.nulls(n, pa.float64() if col.is_numeric else pa.string()) if arr is None else arr.take(idx)
            if col.dtype == "int":
                data[col.name] = (arr.to_numpy(zero_copy_only=False).astype(np.int64) if arr.null_count == 0
                                  else pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False))
            elif col.dtype == "float":
                data[col.name] = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
            else:  # missing categories are NaN (not None), as the server and frames read from files have them
                values = arr.to_numpy(zero_copy_only=False).astype(object)
                if arr.null_count:
                    values[arr.is_null().to_numpy(zero_copy_only=False)] = np.nan
                data[col.name] = values
        return pd.DataFrame(data, copy=False)


def _outside(arr: pa.Array, f: _Field) -> pa.Array:
    bad = pa.array(np.zeros(len(arr), dtype=bool))
    if f.minimum is not None:
        bad = pc.or_(bad, pc.less(arr, pa.scalar(f.minimum, arr.type if f.kind == "integer" else pa.float64())))
    if f.maximum is not None:
        bad = pc.or_(bad, pc.greater(arr, pa.scalar(f.maximum, arr.type if f.kind == "integer" else pa.float64())))
    return bad


# Dates that pydantic's datetime certainly accepts: ISO 8601 with a valid month, a day that every
# month has, a valid time and offset. Anything else (days 29-31, other layouts) goes to pydantic.
_PLAIN_ISO = (r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
              r"(\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$")


def _datetime_failures(schema: RequestSchema, name: str, arr: pa.Array) -> np.ndarray:
    from pydantic import TypeAdapter, ValidationError

    plain = pc.fill_null(pc.match_substring_regex(arr, _PLAIN_ISO), True).to_numpy(zero_copy_only=False)
    bad = np.zeros(len(arr), dtype=bool)
    others = np.flatnonzero(~plain)
    if not len(others):
        return bad
    info = next(fi for fi in schema.row.model_fields.values() if (fi.alias or "") == name)
    try:
        TypeAdapter(list[info.rebuild_annotation()]).validate_python(arr.take(pa.array(others)).to_pylist())
    except ValidationError as err:
        for e in err.errors(include_url=False):
            if e["loc"] and isinstance(e["loc"][0], int):
                bad[others[e["loc"][0]]] = True
    return bad
