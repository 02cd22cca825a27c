"""Everything behind the routes: the loaded model version (hot-swappable), the micro-batcher that
scores concurrent requests in one model call, the prediction log and the metrics.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import Request
from pydantic import BaseModel

from include.serving.metrics import ServingMetrics
from include.serving.predlog import PredictionLog
from include.serving.schema import RequestProblem, build_request_schema, golden_rows
from include.serving.state import ModelState, ServingConfig
from include.spec import Column, DatasetSpec

log = logging.getLogger(__name__)

# A fast-path batch of at most this many rows is scored on the event loop itself (1.2 ms at 64
# rows, 0.35 ms at 8): handing it to the scoring thread cost more than the call (GIL and futex
# hand-offs; bench/serving.py: direct 3,650 -> 4,381 and edge 2,431 -> 2,933 req/s in one A/B
# pair, 3,903 -> 3,898 and 2,352 -> 2,556 in another). Bigger batches and the model's own
# predict (~7 ms) run in the scoring thread, so the loop keeps answering /ready meanwhile.
INLINE_MAX_ROWS = 64


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LoadError(RuntimeError):
    """A model version could not be loaded or failed its golden-sample check."""


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


@dataclass
class _Job:
    columns: dict[str, list]
    n: int
    future: asyncio.Future


class ModelServer:
    """Everything behind the routes: model state, micro-batcher, prediction log, metrics."""

    def __init__(self, cfg: ServingConfig, *, model_loader: Callable[[str, str], Any] | None = None,
                 scorer: Callable[[Any, pd.DataFrame, DatasetSpec], np.ndarray] | None = None):
        self.cfg = cfg
        self.spec = cfg.spec
        self.schema = build_request_schema(cfg.spec, max_rows=cfg.max_rows)
        self.json_schema = self.schema.payload.model_json_schema()  # GET /schema, built once
        self.metrics = ServingMetrics()
        self._loader = model_loader
        self._scorer = scorer
        self._fast_ok = cfg.fast_path and scorer is None  # a scorer of the caller's is always used
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
        self._waiter: asyncio.Future | None = None  # the batch worker waiting for more requests
        self._awaited = 0  # ... until this many are queued
        self._queued_rows = 0
        self._in_flight = 0
        self._peak_cur = self._peak_prev = 0
        self._peak_t0 = 0.0
        self._worker: asyncio.Task | None = None
        self._reload_lock: asyncio.Lock | None = None
        self._frame_columns = self._model_columns()
        self._golden = self.schema.columns_of([self.schema.row.model_validate(r) for r in golden_rows(cfg.spec)])

    # -- model loading ----------------------------------------------------------------------------

    def _model_columns(self) -> list[Column]:
        # the pipeline reads numeric and categorical features (include.training.metrics.model_input_columns)
        return [c for c in self.spec.feature_columns if c.dtype != "datetime"]

    def _load(self, version: str) -> ModelState:
        """Load ``models:/name/version`` and score the golden sample with it (blocking)."""
        t0 = time.perf_counter()
        if self._loader is None or self._scorer is None:
            from include.training.metrics import predict_scores
            from include.training.model_io import load_model

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
        fast = None
        if self._fast_ok:
            from include.serving.fastscore import fast_scorer

            fast = fast_scorer(model, self.spec, self._frame_columns, self._golden, scores, self._frame)
        return ModelState(
            name=self.cfg.model_name, version=str(version), model=model,
            golden_scores=tuple(float(s) for s in scores),
            loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            load_seconds=round(time.perf_counter() - t0, 3), fast=fast,
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

    def _score_with(self, state: ModelState, columns: dict[str, list]) -> np.ndarray:
        if state.fast is not None:
            from include.serving.fastscore import fast_scores

            try:
                return fast_scores(state.fast, self._frame_columns, columns, self._frame)
            except Exception:  # the rows were valid: the model's own predict decides
                log.exception("fast path failed on a batch; scoring it with the model's own predict")
        return self._score(state.model, columns)

    async def _initial_load(self) -> None:
        self.status = "loading"
        loop = asyncio.get_running_loop()
        try:
            state = await loop.run_in_executor(None, self._load, self.cfg.version)
        except Exception as err:  # noqa: BLE001 - any load failure is reported by /ready, with its cause
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
            # the old model was frozen with everything else: let a full collection free its cycles
            gc.unfreeze()
            gc.collect()
        self.metrics.model_info.labels(state.name, state.version).set(1)
        # The model, the libraries and the app live as long as the process: frozen, the cyclic
        # collector no longer walks their ~10^5-10^6 objects at every full collection, which a
        # request's garbage triggers (the slowest requests' extra CPU, more so for V2's bodies).
        gc.freeze()

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
        self._queued_rows += n
        waiter = self._waiter
        if waiter is not None and not waiter.done() and (
                self._queue.qsize() >= self._awaited or self._queued_rows >= self.cfg.batch_rows):
            waiter.set_result(None)
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
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        max_rows, max_wait = self.cfg.batch_rows, self.cfg.batch_wait_ms / 1000.0
        stop = False
        while not stop:
            job = await self._queue.get()
            if job is None:
                break
            self._queued_rows -= job.n
            # Wait (at most max_wait) until as many requests as recently came together are queued:
            # one future per batch, resolved by the request that completes it, instead of a
            # wait_for on an Event per arrival (requests come one by one through the edge; there,
            # 6.4-6.6 -> 7.0 requests per model call in bench/serving.py)
            awaited = self._expected_requests() - 1
            if max_wait > 0 and self._queue.qsize() < awaited and job.n + self._queued_rows < max_rows:
                self._awaited = awaited
                self._waiter = waiter = loop.create_future()
                timer = loop.call_later(max_wait, _resolve, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
            jobs, n = [job], job.n
            while n < max_rows:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    stop = True
                    break
                self._queued_rows -= nxt.n
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
            if state.fast is not None and n <= INLINE_MAX_ROWS:
                scores = self._score_with(state, merged)
            else:
                scores = await loop.run_in_executor(self._executor, self._score_with, state, merged)
        except Exception as err:  # noqa: BLE001 - a scoring failure is answered per request, below
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
        return await self.score_columns(request, self.schema.columns_of(rows), len(rows))

    async def score_columns(self, request: Request, columns: dict[str, list], n: int) -> tuple[str, list[float]]:
        """:meth:`score_rows` for rows already validated as columns (column -> ``n`` values)."""
        if self.state is None:
            raise RequestProblem(503, "not_ready",
                                 f"model not loaded yet ({self.status}{': ' + self.error if self.error else ''})",
                                 headers={"Retry-After": "1"})
        received = datetime.now(UTC)
        try:
            version, scores = await self.predict(columns, n)
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
