"""The request contract of the model server: the spec-derived request models, the golden sample,
reading a JSON body within limits, and the typed 4xx problems every protocol renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import pydantic_core
from fastapi import Request
from fastapi.responses import Response
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from include.spec import Column, DatasetSpec

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STRING_LENGTH = 1000


class RequestProblem(Exception):
    """A request answered with an error: one status, type and message, rendered in each protocol's shape."""

    def __init__(self, status: int, type_: str, message: str, details: list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.details, self.headers = status, type_, message, details, headers


def _valid_utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("string is not valid UTF-8 (lone surrogate)") from err
    return value


def _column_type(col: Column) -> Any:
    if col.dtype == "int":
        lo = INT64_MIN if col.min is None else max(INT64_MIN, math.ceil(col.min))
        hi = INT64_MAX if col.max is None else min(INT64_MAX, math.floor(col.max))
        return Annotated[int, Field(strict=True, ge=lo, le=hi)]
    if col.dtype == "float":
        return Annotated[float, Field(strict=True, ge=col.min, le=col.max, allow_inf_nan=False)]
    if col.dtype == "category" and col.values:
        return Literal[tuple(col.values)]
    if col.dtype in ("category", "string"):
        return Annotated[str, Field(strict=True, max_length=MAX_STRING_LENGTH), AfterValidator(_valid_utf8)]
    if col.dtype == "datetime":
        return datetime
    raise ValueError(f"unsupported dtype {col.dtype!r} of column {col.name!r}")


@dataclass(frozen=True)
class RequestSchema:
    """Pydantic models derived from a dataset spec, plus the attribute name of every column."""

    row: type[BaseModel]
    payload: type[BaseModel]
    attrs: dict[str, str]  # column name -> attribute on a row model
    max_rows: int

    def columns_of(self, rows: list[BaseModel]) -> dict[str, list]:
        return {name: [getattr(r, attr) for r in rows] for name, attr in self.attrs.items()}

    def check_row(self, values: dict[str, Any]) -> tuple[str, str, str] | None:
        """None if ``/predict`` accepts this row, else (error type, field, the message of its 422).

        Batch scoring rejects rows through this, so an offline reject and an online 422 are one rule.
        """
        try:
            self.payload.model_validate({"instance": values})
        except ValidationError as err:
            first = err.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"][1:2]) or "row"
            return first["type"], field, _validation_problem(err)[2].replace("instance.", "")
        return None


def build_request_schema(spec: DatasetSpec, *, max_rows: int = 1000) -> RequestSchema:
    """Row model: every feature column (nullable ones may be omitted) + the optional key column.

    The spec's timestamp column is accepted too (clients often send whole rows of the dataset) and
    validated as a date, but it is not a model input, so it is not scored. Fields are aliased (``f0``, ``f1`` ... internally) so any column name works as a JSON key.
    """
    fields: dict[str, Any] = {}
    attrs: dict[str, str] = {}
    key_col = spec.column(spec.key)
    for i, col in enumerate([*spec.feature_columns, key_col]):
        t = _column_type(col)
        attr = f"f{i}"
        optional = col.nullable or col.name == spec.key
        if optional:
            fields[attr] = (t | None, Field(default=None, alias=col.name))
        else:
            fields[attr] = (t, Field(alias=col.name))
        attrs[col.name] = attr
    if spec.timestamp and spec.timestamp not in attrs:
        fields["ts_not_scored"] = (datetime | None, Field(default=None, alias=spec.timestamp))
    row = create_model(
        f"{spec.name.title().replace('_', '')}Instance",
        __config__=ConfigDict(extra="forbid", str_max_length=MAX_STRING_LENGTH),
        **fields,
    )

    class Payload(BaseModel):
        model_config = ConfigDict(extra="forbid")
        instances: Annotated[list[row], Field(min_length=1, max_length=max_rows)] | None = None  # type: ignore[valid-type]
        instance: row | None = None  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _exactly_one(self):
            if (self.instances is None) == (self.instance is None):
                raise ValueError('send exactly one of "instances" (a list of rows) or "instance" (one row)')
            return self

        def rows(self) -> list[BaseModel]:
            return self.instances if self.instances is not None else [self.instance]

    Payload.__name__ = Payload.__qualname__ = f"{row.__name__[:-len('Instance')]}PredictRequest"
    return RequestSchema(row=row, payload=Payload, attrs=attrs, max_rows=max_rows)


def golden_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    """A small deterministic sample that covers the spec: bounds, midpoints, every category, nulls."""
    numeric_points = ("min", "max", "mid")
    n = max([3] + [len(c.values) for c in spec.feature_columns if c.values])
    rows = []
    for i in range(n):
        row: dict[str, Any] = {}
        for col in spec.feature_columns:
            if col.is_numeric:
                lo = 0.0 if col.min is None else float(col.min)
                hi = lo + 1.0 if col.max is None else float(col.max)
                point = numeric_points[i % 3]
                v = lo if point == "min" else hi if point == "max" else (lo + hi) / 2
                row[col.name] = math.floor(v) if col.dtype == "int" else v
            elif col.values:
                row[col.name] = col.values[i % len(col.values)]
            elif col.dtype == "datetime":
                row[col.name] = "2026-01-01T00:00:00Z"
            else:
                row[col.name] = f"golden-{i}"
        rows.append(row)
    nullable = [c.name for c in spec.feature_columns if c.nullable]
    if nullable:
        rows.append({**rows[0], **{c: None for c in nullable}})
    return rows


def _json(body: dict, status: int = 200, headers: dict | None = None) -> Response:
    return Response(pydantic_core.to_json(body), status_code=status, media_type="application/json",
                    headers=headers)


async def read_json_body(request: Request, max_bytes: int, *, untyped_is_json: bool = False) -> bytes:
    """The body of a JSON request, within ``max_bytes``; raises :class:`RequestProblem` (400, 413, 415).

    ``untyped_is_json``: a body without Content-Type is JSON (the V2 protocol's body always is, and
    Triton's client sends none).
    """
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if (media or not untyped_is_json) and media != "application/json" and not media.endswith("+json"):
        raise RequestProblem(415, "unsupported_media_type",
                             f"send the body as JSON with Content-Type: application/json (got {ctype or 'none'!r})")
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise RequestProblem(400, "bad_request", "invalid Content-Length header")
        if int(length) > max_bytes:
            raise RequestProblem(413, "body_too_large",
                                 f"body of {int(length)} bytes exceeds the limit of {max_bytes} bytes")
        body = await request.body()
    else:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise RequestProblem(413, "body_too_large", f"body exceeds the limit of {max_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
    if not body:
        raise RequestProblem(400, "invalid_json", "empty body; send a JSON object")
    return body


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _safe_input(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value if not isinstance(value, float) or math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value[:80].encode("utf-8", "replace").decode("utf-8")
    return f"<{type(value).__name__}>"


def _validation_problem(err: ValidationError) -> tuple[int, str, str, list[dict]]:
    errors = err.errors(include_url=False, include_context=False)
    types = {e["type"] for e in errors}
    details = [{"loc": _loc(e["loc"]), "msg": e["msg"], "type": e["type"], "input": _safe_input(e.get("input"))}
               for e in errors[:20]]
    if types & {"json_invalid", "json_type"}:
        return 400, "invalid_json", "the body is not valid JSON: " + errors[0]["msg"], details
    if any(e["type"] == "too_long" and tuple(e["loc"]) == ("instances",) for e in errors):
        return 413, "too_many_rows", next(e["msg"] for e in errors if e["type"] == "too_long") + \
            " (rows per request are limited; split the batch)", details
    parts = []
    for e in errors[:5]:
        where = _loc(e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            msg = 'unknown field; the body is {"instances": [row, ...]} or {"instance": row}'
        elif e["type"] == "extra_forbidden":
            msg = "unknown field (not in the dataset spec's features)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        parts.append(f"{where}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "validation_error", "; ".join(parts) + more, details
