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
model call costs nearly as much for 1 row as for 8. Every scored row goes to the prediction
log (:mod:`include.serving.predlog`).

Modules: :mod:`.schema` (request models, body limits, typed problems), :mod:`.metrics` (Prometheus,
the observing middleware), :mod:`.state` (config, loaded model), :mod:`.batcher` (:class:`ModelServer`:
model loading, micro-batcher), :mod:`.fastscore` (the vectorised model call),
:mod:`.routes` (this server's routes), :mod:`.protocols` (V2, MLflow); this module assembles them.

Configured by :func:`create_app` arguments, or by the environment for ``uvicorn
include.serving.app:app`` / ``python -m include.serving`` (see :func:`create_app_from_env`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.serving import routes
from include.serving.batcher import LoadError, ModelServer
from include.serving.metrics import ObserveRequests, ServingMetrics
from include.serving.protocols import add_protocol_routes, protocol_endpoints
from include.serving.schema import RequestProblem, RequestSchema, build_request_schema, golden_rows
from include.serving.state import ModelState, ServingConfig
from include.spec import DatasetSpec, load_spec

# the names other modules and tests import from here
__all__ = [
    "LoadError", "ModelServer", "ModelState", "RequestProblem", "RequestSchema", "ServingConfig",
    "ServingMetrics", "build_request_schema", "create_app", "create_app_from_env", "golden_rows",
]


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
    fast_path: bool = True,
    model_loader: Callable[[str, str], Any] | None = None,
    scorer: Callable[[Any, pd.DataFrame, DatasetSpec], np.ndarray] | None = None,
) -> FastAPI:
    """The serving app for ``models:/model_name/version``.

    ``spec``: a DatasetSpec or a dataset name (loaded from the configured specs dir).
    ``admin_token``: enables ``POST /admin/reload`` (disabled when None/empty).
    ``model_loader(name, version)`` / ``scorer(model, df, spec)`` default to
    :func:`include.training.model_io.load_model` / :func:`include.training.metrics.predict_scores`;
    with the default scorer, ``fast_path`` scores with :mod:`include.serving.fastscore` when it
    gives the same scores.
    The model is loaded in the background at startup; ``/ready`` says when it is serving.
    """
    version = str(version).strip()
    if not routes.VERSION_RE.match(version):
        raise ValueError(f"model version must be a registry version number (models:/name/<N>), got {version!r}")
    if isinstance(spec, str):
        spec = load_spec(spec)
    cfg = ServingConfig(
        model_name=model_name, version=version, spec=spec, predictions_dir=Path(predictions_dir),
        admin_token=admin_token or None, max_rows=int(max_rows), max_body_bytes=int(max_body_bytes),
        batch_rows=max(1, int(batch_rows)), batch_wait_ms=float(batch_wait_ms),
        log_flush_rows=int(log_flush_rows), log_flush_seconds=float(log_flush_seconds),
        model_threads=max(1, int(model_threads)), fast_path=bool(fast_path),
    )
    server = ModelServer(cfg, model_loader=model_loader, scorer=scorer)

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
    app.add_middleware(ObserveRequests, server=server,
                       endpoints={*routes.ENDPOINTS, *protocol_endpoints(model_name)})
    app.add_exception_handler(StarletteHTTPException, routes.http_error)
    app.add_exception_handler(Exception, routes.internal_error)
    app.include_router(routes.router)
    add_protocol_routes(app, server)
    app.include_router(routes.admin_router)
    # routes are tried in order: the scoring paths first (a V2 request was matched against 17 routes
    # before its own, ~15 us of its CPU); their patterns overlap no other route's, so order is free
    scoring = ("/predict", "/v2/models/{model}/infer", "/invocations")
    app.router.routes.sort(key=lambda r: scoring.index(r.path) if getattr(r, "path", None) in scoring else len(scoring))
    return app


# ------------------------------------------------------------------------------------- env entry


def create_app_from_env() -> FastAPI:
    """The app configured by the environment (what the container and ``python -m include.serving`` run).

    MLOPS_DATASET (spec name) and/or MLOPS_MODEL_NAME (default: the dataset spec's ``model_name``; one
    of the two is required, each names the other), MLOPS_MODEL_VERSION (required, a number), MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI,
    MLOPS_PREDICTIONS_DIR, MLOPS_ADMIN_TOKEN, MLOPS_SERVING_MAX_ROWS (1000),
    MLOPS_SERVING_MAX_BODY_BYTES (8 MiB), MLOPS_SERVING_BATCH_ROWS (64), MLOPS_SERVING_BATCH_WAIT_MS (2),
    MLOPS_PREDLOG_FLUSH_ROWS (1000), MLOPS_PREDLOG_FLUSH_SECONDS (5), MLOPS_SERVING_MODEL_THREADS (1),
    MLOPS_SERVING_FASTPATH (1; 0 scores with the model's own predict, see include.serving.fastscore).
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
        fast_path=bool(env_number("MLOPS_SERVING_FASTPATH", 1)),
    )


def __getattr__(name: str) -> Any:
    """``include.serving.app:app`` is built from the environment on first access, not at import."""
    if name == "app":
        app = create_app_from_env()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
