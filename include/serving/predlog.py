"""Durable prediction log: every scored row as Parquet, partitioned by model and day.

Layout::

    <predictions_dir>/<model_name>/date=YYYY-MM-DD/part-<YYYYmmddTHHMMSSffffff>Z-<uuid>.parquet

Columns (fixed per spec, in this order): ``request_id`` (string), ``ts`` (timestamp[us, UTC], when
the request arrived), ``model_version`` (string), ``prediction`` (float64: P(positive class) for
classification, the predicted value for regression), the spec's key column (null when the client
did not send it), then every feature column of the spec (int -> int64, float -> float64,
category/string -> string, datetime -> timestamp[us, UTC]).

Writes are buffered (:class:`PredictionLog`) and flushed every ``flush_rows`` rows, every
``flush_seconds`` and at shutdown; each file is written to a dot-prefixed temp file, fsynced and
renamed, so readers never see a partial file (pyarrow datasets skip dot-files). Rows buffered when
the process is killed (SIGKILL) are lost: at most ``flush_seconds`` worth.

:func:`read_predictions` reads a window back into a DataFrame, touching only the day partitions
and columns it needs.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas/pyarrow are imported lazily: the module is cheap to import
    import pandas as pd
    import pyarrow as pa

    from include.spec import DatasetSpec

log = logging.getLogger(__name__)

META_COLUMNS = ("request_id", "ts", "model_version", "prediction")
_PART_PREFIX = "date="


@functools.cache
def _arrow_types() -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {"int": pa.int64(), "float": pa.float64(), "category": pa.string(), "string": pa.string(),
            "datetime": pa.timestamp("us", tz="UTC")}


def arrow_type(dtype: str) -> pa.DataType:
    """The Arrow type of a spec column dtype (the prediction log's, and the serving fast path's)."""
    return _arrow_types()[dtype]


def prediction_schema(spec: DatasetSpec) -> pa.Schema:
    """Arrow schema of the log for a dataset spec (meta columns, key, features)."""
    import pyarrow as pa

    fields = [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("prediction", pa.float64()),
        pa.field(spec.key, arrow_type(spec.column(spec.key).dtype)),
    ]
    fields += [pa.field(c.name, arrow_type(c.dtype)) for c in spec.feature_columns]
    return pa.schema(fields)


def model_dir(predictions_dir: str | os.PathLike, model_name: str) -> Path:
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise ValueError(f"invalid model name {model_name!r}")
    return Path(predictions_dir) / model_name


class PredictionLog:
    """Buffer of scored rows, flushed to Parquet by a background thread.

    :meth:`append` is cheap (extends Python lists under a lock) and never does I/O, so it can be
    called from the event loop. A failed write keeps the rows and retries at the next flush; the
    buffer is capped at ``max_buffer_rows`` (oldest rows dropped, counted in ``dropped_rows``).
    """

    def __init__(
        self,
        predictions_dir: str | os.PathLike,
        model_name: str,
        spec: DatasetSpec,
        *,
        flush_rows: int = 1000,
        flush_seconds: float = 5.0,
        max_buffer_rows: int = 200_000,
        on_write: Callable[[int, float], None] | None = None,
    ):
        self.dir = model_dir(predictions_dir, model_name)
        self.schema = prediction_schema(spec)
        self.columns = list(self.schema.names)
        self.flush_rows = max(1, int(flush_rows))
        self.flush_seconds = float(flush_seconds)
        self.max_buffer_rows = int(max_buffer_rows)
        self.on_write = on_write
        self.rows_written = 0
        self.files_written = 0
        self.write_errors = 0
        self.dropped_rows = 0
        self.last_error: str | None = None
        self._buf = self._empty()
        self._n = 0
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one writer at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _empty(self) -> dict[str, list]:
        return {name: [] for name in [*self.columns, "_date"]}

    @property
    def buffered_rows(self) -> int:
        return self._n

    # ------------------------------------------------------------------------------------ writes

    def append(self, request_id: str, ts: datetime, model_version: str,
               predictions: Sequence[float], features: dict[str, Sequence[Any]]) -> None:
        """Buffer the rows of one request. ``features`` maps column -> values (missing: nulls)."""
        n = len(predictions)
        if n == 0:
            return
        ts_us = _to_us(ts)
        day = ts.astimezone(UTC).date().isoformat()
        with self._lock:
            b = self._buf
            b["request_id"].extend([request_id] * n)
            b["ts"].extend([ts_us] * n)
            b["model_version"].extend([str(model_version)] * n)
            b["prediction"].extend(predictions)
            b["_date"].extend([day] * n)
            for name in self.columns[4:]:
                values = features.get(name)
                b[name].extend(values if values is not None else [None] * n)
            self._n += n
            if self._n > self.max_buffer_rows:
                drop = self._n - self.max_buffer_rows
                for values in b.values():
                    del values[:drop]
                self._n -= drop
                self.dropped_rows += drop
                log.error("prediction log buffer full: dropped the %d oldest rows", drop)
            full = self._n >= self.flush_rows
        if full:
            self._wake.set()

    def flush(self) -> list[Path]:
        """Write everything buffered now; returns the files written (one per day present)."""
        with self._write_lock:
            with self._lock:
                buf, n = self._buf, self._n
                self._buf, self._n = self._empty(), 0
            if n == 0:
                return []
            t0 = time.perf_counter()
            try:
                paths = self._write(buf)
            except Exception as err:  # keep the rows, retry at the next flush
                self.write_errors += 1
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("prediction log write failed; %d rows kept for the next flush", n)
                with self._lock:
                    for name, values in buf.items():
                        self._buf[name][:0] = values
                    self._n += n
                return []
            self.rows_written += n
            self.files_written += len(paths)
            if self.on_write is not None:
                self.on_write(n, time.perf_counter() - t0)
            return paths

    def _write(self, buf: dict[str, list]) -> list[Path]:
        import pyarrow as pa

        days = buf["_date"]
        groups: dict[str, list[int] | None] = {}
        if len(set(days)) == 1:
            groups[days[0]] = None  # the usual case: one day, no row selection
        else:
            for i, d in enumerate(days):
                groups.setdefault(d, []).append(i)
        arrays = []
        for f in self.schema:
            values = buf[f.name]
            if f.name == "ts":
                arrays.append(pa.array(values, pa.int64()).cast(f.type))
            else:
                arrays.append(_to_arrow(values, f.type))
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        paths = []
        for day, idx in groups.items():
            part = table if idx is None else table.take(pa.array(idx, pa.int64()))
            paths.append(self._write_file(day, part))
        return paths

    def _write_file(self, day: str, table: pa.Table) -> Path:
        import pyarrow.parquet as pq

        out_dir = self.dir / f"{_PART_PREFIX}{day}"
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        final = out_dir / f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = out_dir / f".{final.name}.tmp"
        try:
            with open(tmp, "wb") as fh:
                pq.write_table(table, fh, compression="zstd")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(out_dir)
        return final

    # ------------------------------------------------------------------------------- lifecycle

    def start(self) -> PredictionLog:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="predlog-writer", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._n:
                self.flush()

    def close(self) -> None:
        """Stop the background thread and write whatever is buffered."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()


def _to_us(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _to_arrow(values: list, type_: pa.DataType) -> pa.Array:
    import pyarrow as pa

    try:
        return pa.array(values, type=type_, from_pandas=True)
    except (UnicodeEncodeError, pa.ArrowInvalid):
        if not pa.types.is_string(type_):
            raise
        # strings that are not valid UTF-8 (lone surrogates) must not block the whole log
        fixed = [v if v is None else str(v).encode("utf-8", "replace").decode("utf-8") for v in values]
        return pa.array(fixed, type=type_)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- read


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    elif hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, date or ISO string, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def list_files(predictions_dir: str | os.PathLike, model_name: str, *,
               since: Any = None, until: Any = None) -> list[Path]:
    """Parquet files of the day partitions that can hold rows in [since, until)."""
    root = model_dir(predictions_dir, model_name)
    lo, hi = _as_utc(since), _as_utc(until)
    if not root.is_dir():
        return []
    files = []
    for part in sorted(root.iterdir()):
        if not part.is_dir() or not part.name.startswith(_PART_PREFIX):
            continue
        try:
            day = date.fromisoformat(part.name[len(_PART_PREFIX):])
        except ValueError:
            continue
        if lo is not None and day < lo.date():
            continue
        if hi is not None and datetime(day.year, day.month, day.day, tzinfo=UTC) >= hi:
            continue
        files += sorted(p for p in part.glob("part-*.parquet") if p.is_file())
    return files


def read_predictions(
    predictions_dir: str | os.PathLike,
    model_name: str,
    *,
    since: Any = None,
    until: Any = None,
    model_version: str | int | Iterable[str | int] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Logged predictions of ``model_name`` with ``since <= ts < until``, sorted by ``ts``.

    ``since``/``until``: datetime, date, pandas Timestamp or ISO string (naive = UTC).
    ``model_version``: one version or several. ``columns``: the columns to return (default all);
    only those (plus the ones the filters need) are read from disk. An empty window gives an empty
    frame with the requested columns. Files written with an older spec are read too: columns they
    lack come back as nulls.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    files = list_files(predictions_dir, model_name, since=since, until=until)
    if not files:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in (columns or META_COLUMNS)})
    dataset = ds.dataset([str(p) for p in files], format="parquet")
    schemas = {str(f.physical_schema) for f in dataset.get_fragments()}
    if len(schemas) > 1:  # spec changed over time: read every file with the union of columns
        schema = pa.unify_schemas([f.physical_schema for f in dataset.get_fragments()])
        dataset = ds.dataset([str(p) for p in files], format="parquet", schema=schema)
    available = dataset.schema.names
    wanted = list(columns) if columns is not None else list(available)
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise KeyError(f"unknown prediction log column(s) {unknown}; available: {available}")

    expr = None
    lo, hi = _as_utc(since), _as_utc(until)
    ts_type = dataset.schema.field("ts").type
    if lo is not None:
        expr = pc.field("ts") >= pa.scalar(lo, type=ts_type)
    if hi is not None:
        e = pc.field("ts") < pa.scalar(hi, type=ts_type)
        expr = e if expr is None else expr & e
    if model_version is not None:
        versions = [model_version] if isinstance(model_version, str | int) else list(model_version)
        e = pc.field("model_version").isin([str(v) for v in versions])
        expr = e if expr is None else expr & e
    read_cols = list(dict.fromkeys([*wanted, "ts"]))
    table = dataset.to_table(columns=read_cols, filter=expr)
    if table.num_rows:
        table = table.sort_by("ts")
    df = table.select(wanted).to_pandas()
    return df.reset_index(drop=True)


__all__ = ["META_COLUMNS", "PredictionLog", "list_files", "model_dir", "prediction_schema", "read_predictions"]
