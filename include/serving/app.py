"""The model server: a FastAPI app around one registered model version (``models:/name/version``).

Endpoints (every response carries ``X-Request-ID``, ``X-Model-Name``, ``X-Model-Version`` headers;
JSON bodies also name ``request_id``, ``model_name`` and ``model_version``):

* ``POST /predict`` - ``{"instances": [{feature: value, ...}, ...]}`` or ``{"instance": {...}}``
  -> ``{"predictions": [score, ...]}`` (P(positive class) or the regression value). The request
  schema is derived from the dataset spec: types, ranges, category sets, nullability; the key
  and timestamp columns are optional (the timestamp is not scored); unknown fields are rejected. Bad input gets a 4xx with a message (400
  malformed JSON, 413 too many rows / too large a body, 415 not JSON, 422 schema), never a 5xx.
* ``GET /health`` - liveness (the process and its batch worker run). ``GET /ready`` - readiness:
  the model is loaded and a golden sample built from the spec was scored (503 until then, or with
  ``state: failed`` and the error when loading failed).
* ``GET /metrics`` - Prometheus text format. ``GET /info`` - model, spec, golden scores, limits.
* ``GET /schema`` - JSON schema of the request body.
* The standard protocols on the same path (validation, micro-batching, prediction log, headers):
  the Open Inference Protocol (V2) ``/v2/...`` and MLflow's ``POST /invocations``; see
  :mod:`include.serving.protocols`.
* ``POST /admin/reload`` ``{"version": "N"}`` with ``Authorization: Bearer $MLOPS_ADMIN_TOKEN`` -
  loads the version, scores the golden sample with it, then swaps atomically (old keeps serving
  on any failure).

Concurrent requests are scored together: handlers put their validated rows on a queue and one
worker takes every waiting request (up to ``batch_rows`` rows; when recent traffic had several
requests in flight it waits at most ``batch_wait_ms`` for them) into one ``predict_proba`` call, because a
scikit-learn pipeline scores 8 rows almost as fast as 1. Every scored row goes to the prediction
log (:mod:`include.serving.predlog`).

Configured by :func:`create_app` arguments, or by the environment for ``uvicorn
include.serving.app:app`` / ``python -m include.serving`` (see :func:`create_app_from_env`).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.serving.predlog import PredictionLog
from include.spec import Column, DatasetSpec, load_spec

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STRING_LENGTH = 1000
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
ENDPOINTS = ("/predict", "/health", "/ready", "/metrics", "/info", "/schema", "/admin/reload", "/")


class LoadError(RuntimeError):
    """A model version could not be loaded or failed its golden-sample check."""


class RequestProblem(Exception):
    """A request answered with an error: one status, type and message, rendered in each protocol's shape."""

    def __init__(self, status: int, type_: str, message: str, details: list | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.details, self.headers = status, type_, message, details, headers


_thread_limits = threading.local()


def _limit_native_threads(n: int) -> None:
    """Limit OpenMP/BLAS threads for model calls made by the current thread (kept for its lifetime)."""
    if getattr(_thread_limits, "n", None) == n:
        return
    from threadpoolctl import threadpool_limits

    _thread_limits.limiter = threadpool_limits(limits=n)
    _thread_limits.n = n
    # scikit-learn's config is per thread: skip input re-validation in the scoring thread (the
    # request schema already guarantees finite numbers); halves the cost of a small predict call.
    import sklearn

    sklearn.set_config(assume_finite=True, skip_parameter_validation=True)


# ------------------------------------------------------------------------------------------ schema


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


# ----------------------------------------------------------------------------------------- metrics


class ServingMetrics:
    """Prometheus metrics of one app (own registry: several apps can live in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("mlops_serving_requests_total", "HTTP requests by endpoint, method and status",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram(
            "mlops_serving_request_duration_seconds", "HTTP request latency by endpoint", ["endpoint"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r)
        self.errors = Counter("mlops_serving_errors_total", "Error responses by type", ["type"], registry=r)
        self.rows = Counter("mlops_serving_rows_predicted_total", "Rows scored", ["model_version"], registry=r)
        self.batch_rows = Histogram("mlops_serving_batch_rows", "Rows per model call (micro-batch size)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096), registry=r)
        self.batch_requests = Histogram("mlops_serving_batch_requests", "Requests per model call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.predict_seconds = Histogram(
            "mlops_serving_model_seconds", "Time in the model call per micro-batch",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1), registry=r)
        self.in_flight = Gauge("mlops_serving_predict_in_flight", "Predict requests being served", registry=r)
        self.model_info = Gauge("mlops_serving_model_info", "The model version being served (value 1)",
                                ["model_name", "model_version"], registry=r)
        self.ready = Gauge("mlops_serving_ready", "1 when the model is loaded and passed its golden sample",
                           registry=r)
        self.reloads = Counter("mlops_serving_model_reloads_total", "Hot model swaps by result", ["result"],
                               registry=r)
        self.log_rows = Counter("mlops_serving_predlog_rows_written_total", "Rows written to the prediction log",
                                registry=r)
        self.log_buffered = Gauge("mlops_serving_predlog_buffered_rows", "Rows waiting to be written", registry=r)
        self.log_errors = Gauge("mlops_serving_predlog_write_errors", "Failed prediction log writes", registry=r)


# ------------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class ModelState:
    """One loaded model version; swapped as a whole (a single attribute assignment)."""

    name: str
    version: str
    model: Any
    golden_scores: tuple[float, ...]
    loaded_at: str
    load_seconds: float


@dataclass
class _Job:
    columns: dict[str, list]
    n: int
    future: asyncio.Future


@dataclass
class ServingConfig:
    model_name: str
    version: str
    spec: DatasetSpec
    predictions_dir: Path
    admin_token: str | None = None
    max_rows: int = 1000
    max_body_bytes: int = 8 * 1024 * 1024
    batch_rows: int = 64
    batch_wait_ms: float = 2.0
    log_flush_rows: int = 1000
    log_flush_seconds: float = 5.0
    model_threads: int = 1


class ModelServer:
    """Everything behind the routes: model state, micro-batcher, prediction log, metrics."""

    def __init__(self, cfg: ServingConfig, *, model_loader: Callable[[str, str], Any] | None = None,
                 scorer: Callable[[Any, pd.DataFrame, DatasetSpec], np.ndarray] | None = None):
        self.cfg = cfg
        self.spec = cfg.spec
        self.schema = build_request_schema(cfg.spec, max_rows=cfg.max_rows)
        self.metrics = ServingMetrics()
        self._loader = model_loader
        self._scorer = scorer
        self.state: ModelState | None = None
        self.status = "starting"  # starting -> loading -> ready | failed; draining at shutdown
        self.error: str | None = None
        self.predlog = PredictionLog(
            cfg.predictions_dir, cfg.model_name, cfg.spec, flush_rows=cfg.log_flush_rows,
            flush_seconds=cfg.log_flush_seconds, on_write=lambda n, _s: self.metrics.log_rows.inc(n))
        # One scoring thread, and one BLAS/OpenMP thread inside it: HistGradientBoosting's OpenMP
        # predict on a few rows is 30x slower with 2 spinning threads than with 1 (measured here).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score",
                                            initializer=_limit_native_threads, initargs=(cfg.model_threads,))
        self._queue: asyncio.Queue[_Job | None] | None = None
        self._enqueued: asyncio.Event | None = None
        self._in_flight = 0
        self._peak_cur = self._peak_prev = 0
        self._peak_t0 = 0.0
        self._worker: asyncio.Task | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._frame_columns = self._model_columns()
        self._golden = self.schema.columns_of([self.schema.row.model_validate(r) for r in golden_rows(cfg.spec)])

    # -- model loading ----------------------------------------------------------------------------

    def _model_columns(self) -> list[Column]:
        # the pipeline reads numeric and categorical features (include.training.model_input_columns)
        return [c for c in self.spec.feature_columns if c.dtype != "datetime"]

    def _load(self, version: str) -> ModelState:
        """Load ``models:/name/version`` and score the golden sample with it (blocking)."""
        t0 = time.perf_counter()
        if self._loader is None or self._scorer is None:
            from include.training import load_model, predict_scores

            self._loader = self._loader or load_model
            self._scorer = self._scorer or predict_scores
        try:
            model = self._loader(self.cfg.model_name, version)
        except Exception as err:
            raise LoadError(f"could not load models:/{self.cfg.model_name}/{version}: "
                            f"{type(err).__name__}: {err}") from err
        try:
            _limit_native_threads(self.cfg.model_threads)
            scores = self._score(model, self._golden)
        except Exception as err:
            raise LoadError(f"models:/{self.cfg.model_name}/{version} failed to score the golden sample built "
                            f"from spec {self.spec.name!r}: {type(err).__name__}: {err}") from err
        n = len(next(iter(self._golden.values())))
        if scores.shape != (n,) or not np.all(np.isfinite(scores)):
            raise LoadError(f"models:/{self.cfg.model_name}/{version} gave {scores!r} for the {n} golden rows")
        if self.spec.task == "classification" and not np.all((scores >= 0) & (scores <= 1)):
            raise LoadError(f"models:/{self.cfg.model_name}/{version} gave probabilities outside [0, 1]")
        return ModelState(
            name=self.cfg.model_name, version=str(version), model=model,
            golden_scores=tuple(float(s) for s in scores),
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            load_seconds=round(time.perf_counter() - t0, 3),
        )

    def _frame(self, columns: dict[str, list]) -> pd.DataFrame:
        data = {}
        for col in self._frame_columns:
            values = columns[col.name]
            if col.dtype == "int":
                data[col.name] = (np.array(values, dtype=np.int64) if None not in values
                                  else np.array(values, dtype=np.float64))
            elif col.dtype == "float":
                data[col.name] = np.array(values, dtype=np.float64)
            else:  # missing categories are NaN, as in frames read from CSV/Parquet
                data[col.name] = np.array([np.nan if v is None else v for v in values], dtype=object)
        return pd.DataFrame(data, copy=False)

    def _score(self, model: Any, columns: dict[str, list]) -> np.ndarray:
        return np.asarray(self._scorer(model, self._frame(columns), self.spec), dtype=np.float64)

    async def _initial_load(self) -> None:
        self.status = "loading"
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(None, self._load, self.cfg.version)
        except Exception as err:
            self.status, self.error = "failed", str(err)
            log.error("model server not ready: %s", err)
            return
        self._set_state(state)
        self.status = "ready"
        self.metrics.ready.set(1)
        log.info("serving %s v%s (loaded in %.2fs)", state.name, state.version, state.load_seconds)

    def _set_state(self, state: ModelState) -> None:
        old, self.state = self.state, state
        if old is not None:
            self.metrics.model_info.remove(old.name, old.version)
        self.metrics.model_info.labels(state.name, state.version).set(1)

    async def reload(self, version: str) -> tuple[str | None, ModelState, bool]:
        """Hot swap: load + golden check off the event loop, then one assignment. Old keeps serving on error."""
        assert self._reload_lock is not None
        async with self._reload_lock:
            previous = self.state.version if self.state else None
            if self.state is not None and self.state.version == version:
                return previous, self.state, False
            state = await asyncio.get_running_loop().run_in_executor(None, self._load, version)
            self._set_state(state)
            if self.status != "draining":
                self.status, self.error = "ready", None
                self.metrics.ready.set(1)
            return previous, state, True

    # -- micro-batching ---------------------------------------------------------------------------

    async def predict(self, columns: dict[str, list], n: int) -> tuple[str, np.ndarray]:
        assert self._queue is not None
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(columns, n, fut))
        self._enqueued.set()
        return await fut

    def in_flight(self, delta: int) -> None:
        """Count predict requests in their handlers; remember the peak of the last 1-2 s.

        The peak is the batcher's estimate of how many requests can come together: it waits (at
        most ``batch_wait_ms``) for that many before calling the model. A lone client never waits.
        """
        self._in_flight += delta
        if delta > 0:
            now = time.monotonic()
            if now - self._peak_t0 > 1.0:
                self._peak_prev, self._peak_cur, self._peak_t0 = self._peak_cur, 0, now
            if self._in_flight > self._peak_cur:
                self._peak_cur = self._in_flight

    def _expected_requests(self) -> int:
        return max(self._peak_cur, self._peak_prev)

    async def _batch_worker(self) -> None:
        assert self._queue is not None and self._enqueued is not None
        loop = asyncio.get_running_loop()
        max_rows, max_wait = self.cfg.batch_rows, self.cfg.batch_wait_ms / 1000.0
        stop = False
        while not stop:
            job = await self._queue.get()
            if job is None:
                break
            jobs, n = [job], job.n
            deadline = loop.time() + max_wait
            while n < max_rows:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if len(jobs) >= self._expected_requests() or remaining <= 0:
                        break
                    self._enqueued.clear()
                    try:
                        await asyncio.wait_for(self._enqueued.wait(), remaining)
                    except TimeoutError:
                        break
                    continue
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                n += nxt.n
            try:
                await self._run_batch(jobs, n)
            except Exception as err:  # never leave a request waiting, never let the worker die
                log.exception("batch of %d requests failed", len(jobs))
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(err)

    async def _run_batch(self, jobs: list[_Job], n: int) -> None:
        state = self.state
        loop = asyncio.get_running_loop()
        if state is None:
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(LoadError("no model loaded"))
            return
        if len(jobs) == 1:
            merged = jobs[0].columns
        else:
            merged = {c: list(itertools.chain.from_iterable(j.columns[c] for j in jobs)) for c in jobs[0].columns}
        t0 = time.perf_counter()
        try:
            scores = await loop.run_in_executor(self._executor, self._score, state.model, merged)
        except Exception as err:
            if len(jobs) > 1:  # one bad request must not fail its neighbours: score them one by one
                for j in jobs:
                    await self._run_batch([j], j.n)
                return
            if not jobs[0].future.done():
                jobs[0].future.set_exception(err)
            return
        self.metrics.predict_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_rows.observe(n)
        self.metrics.batch_requests.observe(len(jobs))
        self.metrics.rows.labels(state.version).inc(n)
        off = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result((state.version, scores[off:off + j.n]))
            off += j.n

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._enqueued = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.predlog.start()
        self._worker = asyncio.create_task(self._batch_worker(), name="batch-worker")
        self._loader_task = asyncio.create_task(self._initial_load(), name="model-load")

    async def stop(self) -> None:
        self.status = "draining"
        self.metrics.ready.set(0)
        if self._queue is not None and self._worker is not None:
            await self._queue.put(None)
            try:
                await asyncio.wait_for(self._worker, 30)
            except (TimeoutError, asyncio.CancelledError):
                self._worker.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.predlog.close)
        self._executor.shutdown(wait=False)

    def worker_alive(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @contextmanager
    def handling(self):
        """Count a scoring request in its handler (the batcher's estimate of what comes together)."""
        self.in_flight(+1)
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight(-1)
            self.metrics.in_flight.dec()

    async def score_rows(self, request: Request, rows: list[BaseModel]) -> tuple[str, list[float]]:
        """Score validated rows through the micro-batcher and log them: the one path of every protocol.

        Names the version that scored them on the response (``X-Model-Version``); raises
        :class:`RequestProblem` (503 not ready, 500 model failure).
        """
        if self.state is None:
            raise RequestProblem(503, "not_ready",
                                 f"model not loaded yet ({self.status}{': ' + self.error if self.error else ''})",
                                 headers={"Retry-After": "1"})
        columns = self.schema.columns_of(rows)
        received = datetime.now(UTC)
        try:
            version, scores = await self.predict(columns, len(rows))
        except LoadError as err:
            raise RequestProblem(503, "not_ready", str(err), headers={"Retry-After": "1"}) from err
        except Exception as err:  # the model itself failed on valid input: a server-side error
            log.exception("model call failed for request %s", request.scope["state"]["request_id"])
            raise RequestProblem(500, "model_error",
                                 f"the model failed on this input ({type(err).__name__})") from err
        request.scope["state"]["model_version"] = version
        preds = scores.tolist()
        self.predlog.append(request.scope["state"]["request_id"], received, version, preds, columns)
        return version, preds

    @property
    def model_version(self) -> str:
        return self.state.version if self.state else self.cfg.version


# --------------------------------------------------------------------------------------- responses


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


# ------------------------------------------------------------------------------------------- app


def create_app(
    model_name: str,
    version: str | int,
    *,
    spec: DatasetSpec | str,
    predictions_dir: str | os.PathLike,
    admin_token: str | None = None,
    max_rows: int = 1000,
    max_body_bytes: int = 8 * 1024 * 1024,
    batch_rows: int = 64,
    batch_wait_ms: float = 2.0,
    log_flush_rows: int = 1000,
    log_flush_seconds: float = 5.0,
    model_threads: int = 1,
    model_loader: Callable[[str, str], Any] | None = None,
    scorer: Callable[[Any, pd.DataFrame, DatasetSpec], np.ndarray] | None = None,
) -> FastAPI:
    """The serving app for ``models:/model_name/version``.

    ``spec``: a DatasetSpec or a dataset name (loaded from the configured specs dir).
    ``admin_token``: enables ``POST /admin/reload`` (disabled when None/empty).
    ``model_loader(name, version)`` / ``scorer(model, df, spec)`` default to
    :func:`include.training.load_model` / :func:`include.training.predict_scores`.
    The model is loaded in the background at startup; ``/ready`` says when it is serving.
    """
    version = str(version).strip()
    if not _VERSION_RE.match(version):
        raise ValueError(f"model version must be a registry version number (models:/name/<N>), got {version!r}")
    if isinstance(spec, str):
        spec = load_spec(spec)
    cfg = ServingConfig(
        model_name=model_name, version=version, spec=spec, predictions_dir=Path(predictions_dir),
        admin_token=admin_token or None, max_rows=int(max_rows), max_body_bytes=int(max_body_bytes),
        batch_rows=max(1, int(batch_rows)), batch_wait_ms=float(batch_wait_ms),
        log_flush_rows=int(log_flush_rows), log_flush_seconds=float(log_flush_seconds),
        model_threads=max(1, int(model_threads)),
    )
    server = ModelServer(cfg, model_loader=model_loader, scorer=scorer)
    metrics = server.metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(
        title=f"{model_name} model server",
        description=f"Scores rows of the {spec.name!r} dataset with a model version from the MLflow registry.",
        lifespan=lifespan, docs_url="/docs", redoc_url=None,
    )
    app.state.server = server

    def meta(request: Request) -> dict:
        st = request.scope.get("state") or {}
        return {"request_id": st.get("request_id", ""), "model_name": model_name,
                "model_version": st.get("model_version") or server.model_version}

    def problem(request: Request, status: int, type_: str, message: str, details: list | None = None,
                headers: dict | None = None) -> Response:
        metrics.errors.labels(type_).inc()
        body = {"error": {"status": status, "type": type_, "message": message}, **meta(request)}
        if details:
            body["error"]["details"] = details
        return _json(body, status, headers)

    # -- middleware: request id, model headers, metrics ---------------------------------------------

    class Observe:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            t0 = time.perf_counter()
            rid = None
            for k, v in scope["headers"]:
                if k == b"x-request-id":
                    candidate = v.decode("latin-1")
                    rid = candidate if _REQUEST_ID_RE.match(candidate) else None
                    break
            rid = rid or uuid.uuid4().hex
            st = scope.setdefault("state", {})
            st["request_id"] = rid
            status = [500]

            async def send_wrapper(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    version = st.get("model_version") or server.model_version
                    message["headers"] = [
                        *message.get("headers", []),
                        (b"x-request-id", rid.encode()),
                        (b"x-model-name", model_name.encode()),
                        (b"x-model-version", str(version).encode()),
                    ]
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                path = scope["path"]
                endpoint = path if path in endpoints else "other"
                metrics.requests.labels(endpoint, scope["method"], str(status[0])).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    app.add_middleware(Observe)

    from include.serving.protocols import add_protocol_routes, protocol_endpoints

    endpoints = {*ENDPOINTS, *protocol_endpoints(model_name)}

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(request, exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return problem(request, 500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")

    # -- routes -------------------------------------------------------------------------------------

    json_schema = server.schema.payload.model_json_schema()

    @app.post("/predict", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
    async def predict(request: Request):
        """Score rows: {"instances": [{...}, ...]} or {"instance": {...}}; see GET /schema."""
        with server.handling():
            try:
                body = await read_json_body(request, cfg.max_body_bytes)
                try:
                    payload = server.schema.payload.model_validate_json(body)
                except ValidationError as err:
                    raise RequestProblem(*_validation_problem(err)) from None
                version, preds = await server.score_rows(request, payload.rows())
            except RequestProblem as p:
                return problem(request, p.status, p.type, p.message, p.details, p.headers)
            rid = request.scope["state"]["request_id"]
            body = {"request_id": rid, "model_name": model_name, "model_version": version, "predictions": preds}
            if payload.instance is not None:
                body["prediction"] = preds[0]
            return _json(body)

    @app.get("/health")
    async def health(request: Request):
        """Liveness: the process answers and the batch worker runs (whether or not the model is loaded)."""
        alive = server.worker_alive() or server.status == "draining"
        body = {"status": "ok" if alive else "dead", "state": server.status, "ready": server.status == "ready",
                **meta(request)}
        return _json(body, 200 if alive else 503)

    @app.get("/ready")
    async def ready(request: Request):
        """Readiness: model loaded and golden sample scored (503 otherwise, with the reason)."""
        ok = server.status == "ready" and server.state is not None and server.worker_alive()
        body = {"ready": ok, "state": server.status, **meta(request)}
        if server.error:
            body["error"] = server.error
        return _json(body, 200 if ok else 503)

    @app.get("/metrics")
    async def prometheus(request: Request):
        metrics.log_buffered.set(server.predlog.buffered_rows)
        metrics.log_errors.set(server.predlog.write_errors)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def info(request: Request):
        st = server.state
        return _json({
            **meta(request),
            "state": server.status,
            "model_uri": f"models:/{model_name}/{server.model_version}",
            "dataset": spec.name, "task": spec.task,
            "features": [c.name for c in spec.feature_columns], "key": spec.key,
            "golden_scores": list(st.golden_scores) if st else None,
            "loaded_at": st.loaded_at if st else None, "load_seconds": st.load_seconds if st else None,
            "limits": {"max_rows": cfg.max_rows, "max_body_bytes": cfg.max_body_bytes,
                       "batch_rows": cfg.batch_rows, "batch_wait_ms": cfg.batch_wait_ms},
            "prediction_log": {"dir": str(server.predlog.dir), "rows_written": server.predlog.rows_written,
                               "buffered_rows": server.predlog.buffered_rows,
                               "write_errors": server.predlog.write_errors},
        })

    @app.get("/schema")
    async def schema(request: Request):
        """JSON schema of the /predict body, derived from the dataset spec."""
        return _json(json_schema)

    @app.get("/")
    async def root(request: Request):
        return _json({**meta(request), "endpoints": [*ENDPOINTS, *protocol_endpoints(model_name)]})

    add_protocol_routes(app, server)

    @app.post("/admin/reload")
    async def reload(request: Request):
        """Hot swap to another version: {"version": "N"}; needs Authorization: Bearer <MLOPS_ADMIN_TOKEN>."""
        if not cfg.admin_token:
            return problem(request, 403, "forbidden", "the admin API is disabled (MLOPS_ADMIN_TOKEN is not set)")
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return problem(request, 401, "unauthorized", "send Authorization: Bearer <admin token>",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(token.strip().encode(), cfg.admin_token.encode()):
            return problem(request, 403, "forbidden", "invalid admin token")
        try:
            body = pydantic_core.from_json(await request.body())
        except ValueError as err:
            return problem(request, 400, "invalid_json", f"the body is not valid JSON: {err}")
        new = str(body.get("version", "")).strip() if isinstance(body, dict) else ""
        if not _VERSION_RE.match(new):
            return problem(request, 422, "validation_error", 'send {"version": "<registry version number>"}')
        try:
            previous, state, changed = await server.reload(new)
        except LoadError as err:
            metrics.reloads.labels("failed").inc()
            not_found = "RESOURCE_DOES_NOT_EXIST" in str(err) or "not found" in str(err).lower()
            return problem(request, 404 if not_found else 422, "reload_failed",
                           f"{err}; still serving version {server.model_version}")
        metrics.reloads.labels("swapped" if changed else "unchanged").inc()
        request.scope["state"]["model_version"] = state.version
        return _json({**meta(request), "previous_version": previous, "changed": changed,
                      "load_seconds": state.load_seconds, "golden_scores": list(state.golden_scores)})

    return app


# ------------------------------------------------------------------------------------- env entry


def create_app_from_env() -> FastAPI:
    """The app configured by the environment (what the container and ``python -m include.serving`` run).

    MLOPS_DATASET (spec name) and/or MLOPS_MODEL_NAME (default: the dataset spec's ``model_name``; one
    of the two is required, each names the other), MLOPS_MODEL_VERSION (required, a number), MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
    MLOPS_PREDICTIONS_DIR, MLOPS_ADMIN_TOKEN, MLOPS_SERVING_MAX_ROWS (1000),
    MLOPS_SERVING_MAX_BODY_BYTES (8 MiB), MLOPS_SERVING_BATCH_ROWS (64), MLOPS_SERVING_BATCH_WAIT_MS (2),
    MLOPS_PREDLOG_FLUSH_ROWS (1000), MLOPS_PREDLOG_FLUSH_SECONDS (5), MLOPS_SERVING_MODEL_THREADS (1).
    """
    from include.config import env_number, settings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    s = settings()
    version = os.environ.get("MLOPS_MODEL_VERSION", "").strip()
    if not version:
        raise RuntimeError("MLOPS_MODEL_VERSION is not set: the server serves one registry version, "
                           "e.g. MLOPS_MODEL_VERSION=3 (resolve aliases such as 'champion' before starting)")
    from include.catalog import dataset_for_model, model_for

    model = os.environ.get("MLOPS_MODEL_NAME", "").strip() or None
    dataset = os.environ.get("MLOPS_DATASET", "").strip() or None
    if not (model or dataset):
        raise RuntimeError("set MLOPS_DATASET (the spec the server validates requests with) or MLOPS_MODEL_NAME")
    return create_app(
        model or model_for(dataset), version,
        spec=dataset or dataset_for_model(model),
        predictions_dir=s.predictions_dir,
        admin_token=os.environ.get("MLOPS_ADMIN_TOKEN", "").strip() or None,
        max_rows=env_number("MLOPS_SERVING_MAX_ROWS", 1000),
        max_body_bytes=env_number("MLOPS_SERVING_MAX_BODY_BYTES", 8 * 1024 * 1024),
        batch_rows=env_number("MLOPS_SERVING_BATCH_ROWS", 64),
        batch_wait_ms=env_number("MLOPS_SERVING_BATCH_WAIT_MS", 2.0, float),
        log_flush_rows=env_number("MLOPS_PREDLOG_FLUSH_ROWS", 1000),
        log_flush_seconds=env_number("MLOPS_PREDLOG_FLUSH_SECONDS", 5.0, float),
        model_threads=env_number("MLOPS_SERVING_MODEL_THREADS", 1),
    )


def __getattr__(name: str) -> Any:
    """``include.serving.app:app`` is built from the environment on first access, not at import."""
    if name == "app":
        app = create_app_from_env()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
