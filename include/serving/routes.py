"""The model server's own routes (``/predict``, health, metrics, info, schema, admin reload) and its
error handlers. Each handler finds its :class:`ModelServer` on ``request.app.state.server``."""

from __future__ import annotations

import hmac
import logging
import re

import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.serving.batcher import LoadError, ModelServer
from include.serving.protocols import protocol_endpoints
from include.serving.schema import RequestProblem, _json, _validation_problem, read_json_body

log = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
ENDPOINTS = ("/predict", "/health", "/ready", "/metrics", "/info", "/schema", "/admin/reload", "/")

router = APIRouter()


def _server(request: Request) -> ModelServer:
    return request.app.state.server


def meta(request: Request, server: ModelServer) -> dict:
    st = request.scope.get("state") or {}
    return {"request_id": st.get("request_id", ""), "model_name": server.cfg.model_name,
            "model_version": st.get("model_version") or server.model_version}


def problem(request: Request, status: int, type_: str, message: str, details: list | None = None,
            headers: dict | None = None, *, server: ModelServer | None = None) -> Response:
    server = server or _server(request)
    server.metrics.errors.labels(type_).inc()
    body = {"error": {"status": status, "type": type_, "message": message}, **meta(request, server)}
    if details:
        body["error"]["details"] = details
    return _json(body, status, headers)


async def http_error(request: Request, exc: StarletteHTTPException):
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem(request, exc.status_code, kind, str(exc.detail), headers=getattr(exc, "headers", None))


async def internal_error(request: Request, exc: Exception):
    log.exception("unhandled error on %s", request.url.path)
    return problem(request, 500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")


@router.post("/predict", openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": {"type": "object"}}}}})
async def predict(request: Request):
    """Score rows: {"instances": [{...}, ...]} or {"instance": {...}}; see GET /schema."""
    server = _server(request)
    with server.handling():
        try:
            body = await read_json_body(request, server.cfg.max_body_bytes)
            try:
                payload = server.schema.payload.model_validate_json(body)
            except ValidationError as err:
                raise RequestProblem(*_validation_problem(err)) from None
            version, preds = await server.score_rows(request, payload.rows())
        except RequestProblem as p:
            return problem(request, p.status, p.type, p.message, p.details, p.headers, server=server)
        rid = request.scope["state"]["request_id"]
        body = {"request_id": rid, "model_name": server.cfg.model_name, "model_version": version,
                "predictions": preds}
        if payload.instance is not None:
            body["prediction"] = preds[0]
        return _json(body)


@router.get("/health")
async def health(request: Request):
    """Liveness: the process answers and the batch worker runs (whether or not the model is loaded)."""
    server = _server(request)
    alive = server.worker_alive() or server.status == "draining"
    body = {"status": "ok" if alive else "dead", "state": server.status, "ready": server.status == "ready",
            **meta(request, server)}
    return _json(body, 200 if alive else 503)


@router.get("/ready")
async def ready(request: Request):
    """Readiness: model loaded and golden sample scored (503 otherwise, with the reason)."""
    server = _server(request)
    ok = server.status == "ready" and server.state is not None and server.worker_alive()
    body = {"ready": ok, "state": server.status, **meta(request, server)}
    if server.error:
        body["error"] = server.error
    return _json(body, 200 if ok else 503)


@router.get("/metrics")
async def prometheus(request: Request):
    server = _server(request)
    metrics = server.metrics
    metrics.log_buffered.set(server.predlog.buffered_rows)
    metrics.log_errors.set(server.predlog.write_errors)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/info")
async def info(request: Request):
    server = _server(request)
    st, cfg, spec = server.state, server.cfg, server.spec
    return _json({
        **meta(request, server),
        "state": server.status,
        "model_uri": f"models:/{cfg.model_name}/{server.model_version}",
        "dataset": spec.name, "task": spec.task,
        "features": [c.name for c in spec.feature_columns], "key": spec.key,
        "golden_scores": list(st.golden_scores) if st else None,
        "loaded_at": st.loaded_at if st else None, "load_seconds": st.load_seconds if st else None,
        # which code scores: the vectorised fast path (same scores, checked at load) or the model's predict
        "scorer": None if st is None else "fast_path" if st.fast is not None else "model_predict",
        "limits": {"max_rows": cfg.max_rows, "max_body_bytes": cfg.max_body_bytes,
                   "batch_rows": cfg.batch_rows, "batch_wait_ms": cfg.batch_wait_ms},
        "prediction_log": {"dir": str(server.predlog.dir), "rows_written": server.predlog.rows_written,
                           "buffered_rows": server.predlog.buffered_rows,
                           "write_errors": server.predlog.write_errors},
    })


@router.get("/schema")
async def schema(request: Request):
    """JSON schema of the /predict body, derived from the dataset spec."""
    return _json(_server(request).json_schema)


@router.get("/")
async def root(request: Request):
    server = _server(request)
    return _json({**meta(request, server), "endpoints": [*ENDPOINTS, *protocol_endpoints(server.cfg.model_name)]})


admin_router = APIRouter()


@admin_router.post("/admin/reload")
async def reload(request: Request):
    """Hot swap to another version: {"version": "N"}; needs Authorization: Bearer <MLOPS_ADMIN_TOKEN>."""
    server = _server(request)
    admin_token, metrics = server.cfg.admin_token, server.metrics
    if not admin_token:
        return problem(request, 403, "forbidden", "the admin API is disabled (MLOPS_ADMIN_TOKEN is not set)")
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return problem(request, 401, "unauthorized", "send Authorization: Bearer <admin token>",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), admin_token.encode()):
        return problem(request, 403, "forbidden", "invalid admin token")
    try:
        body = pydantic_core.from_json(await request.body())
    except ValueError as err:
        return problem(request, 400, "invalid_json", f"the body is not valid JSON: {err}")
    new = str(body.get("version", "")).strip() if isinstance(body, dict) else ""
    if not VERSION_RE.match(new):
        return problem(request, 422, "validation_error", 'send {"version": "<registry version number>"}')
    try:
        previous, state, changed = await server.reload(new)
    except LoadError as err:
        metrics.reloads.labels("failed").inc()
        from include.tracking import is_not_found  # the loader imported it already

        not_found = is_not_found(err.__cause__)
        return problem(request, 404 if not_found else 422, "reload_failed",
                       f"{err}; still serving version {server.model_version}")
    metrics.reloads.labels("swapped" if changed else "unchanged").inc()
    request.scope["state"]["model_version"] = state.version
    return _json({**meta(request, server), "previous_version": previous, "changed": changed,
                  "load_seconds": state.load_seconds, "golden_scores": list(state.golden_scores)})
