"""The standard inference protocols on the model server: Open Inference Protocol (V2) REST and MLflow's scoring server.

Both are translations onto ``/predict``'s own path, not a second one: a request is validated with
the spec-derived row model's rules (the same limits and messages; a well-formed V2 request in one
pass straight to columns, see :mod:`include.serving.v2`), scored by :meth:`ModelServer.score_rows`
(the same micro-batcher, prediction log and lineage headers ``X-Request-ID`` / ``X-Model-Name`` /
``X-Model-Version``), and answered in the protocol's shape.

Open Inference Protocol (KServe, Seldon/MLServer and Triton speak it; JSON tensors only, not
Triton's binary tensor extension):

* ``GET /v2`` server metadata; ``GET /v2/health/live``, ``/v2/health/ready``;
* ``GET /v2/models/{name}[/versions/{v}]`` model metadata: one input per feature column of the
  dataset spec, typed ``INT64`` / ``FP64`` / ``BYTES`` (categories, strings, ISO 8601 dates),
  shape ``[-1]``; one output ``predictions`` (``FP64``); ``.../ready``;
* ``POST /v2/models/{name}[/versions/{v}]/infer``: columnar inputs, one per column, shape ``[n]``
  (or ``[n, 1]``), request ``parameters.content_type`` ``pd`` (or none). Nullable features may be
  left out; ``NaN`` or ``null`` is a missing value (pandas' convention); the key and timestamp
  columns are optional inputs. Errors are ``{"error": "..."}`` with a 4xx (5xx only for a
  model that fails on valid input or is not loaded).

MLflow scoring server (``mlflow models serve``): ``POST /invocations`` with one of
``dataframe_split``, ``dataframe_records``, ``instances`` or ``inputs`` (records or columns)
answers ``{"predictions": [...]}``; errors are MLflow's ``{"error_code": ..., "message": ...}``.
``GET /ping`` is readiness as MLflow has it (this server's ``/health`` stays liveness).
``POST /endpoints/{name}/invocations`` is the path ``mlflow.deployments.get_deploy_client`` posts to.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from include.serving.batcher import ModelServer
from include.serving.schema import RequestProblem, _json, _loc, _validation_problem, read_json_body
from include.serving.v2 import OUTPUT, V2_DATATYPE, V2Columns, V2Request, missing_value, v2_rows

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_MLFLOW_CODES = {400: "BAD_REQUEST", 413: "RESOURCE_EXHAUSTED", 415: "BAD_REQUEST", 422: "INVALID_PARAMETER_VALUE",
                 404: "RESOURCE_DOES_NOT_EXIST", 503: "TEMPORARILY_UNAVAILABLE"}


def protocol_endpoints(model_name: str) -> list[str]:
    """The fixed paths of this module (metrics label them by path; versioned V2 paths count as other)."""
    m = f"/v2/models/{model_name}"
    return ["/v2", "/v2/health/live", "/v2/health/ready", m, f"{m}/ready", f"{m}/infer", "/invocations",
            "/ping", f"/endpoints/{model_name}/invocations"]


# ------------------------------------------------------------------------------ MLflow formats


def mlflow_rows(payload: Any) -> list[Any]:
    """MLflow's scoring-server JSON -> rows (dicts; anything else is left for the row schema to refuse)."""
    if not isinstance(payload, dict):
        raise RequestProblem(400, "bad_request", "send a JSON object with exactly one of " + ", ".join(MLFLOW_FORMATS))
    keys = [k for k in payload if k in MLFLOW_FORMATS]
    unknown = [k for k in payload if k not in MLFLOW_FORMATS and k != "params"]
    if len(keys) != 1 or unknown:
        raise RequestProblem(400, "bad_request", f"send exactly one of {', '.join(MLFLOW_FORMATS)} "
                                                 f"(and optionally params); got {sorted(payload)}")
    fmt, data = keys[0], payload[keys[0]]
    if fmt == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("columns"), list) \
                or not isinstance(data.get("data"), list):
            raise RequestProblem(400, "bad_request",
                                 'dataframe_split is {"columns": [name, ...], "data": [[value, ...], ...]}')
        cols = data["columns"]
        rows = []
        for i, values in enumerate(data["data"]):
            if not isinstance(values, list) or len(values) != len(cols):
                raise RequestProblem(400, "bad_request",
                                     f"dataframe_split.data[{i}] must be a list of {len(cols)} values (one per column)")
            rows.append(dict(zip(cols, values, strict=True)))
    elif isinstance(data, dict) and fmt in ("instances", "inputs"):  # columns: {name: [value, ...]}
        lengths = {len(v) if isinstance(v, list) else -1 for v in data.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise RequestProblem(400, "bad_request", f"{fmt} as columns needs a list per column, all of one length")
        rows = [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
    elif isinstance(data, list):
        rows = data
    else:
        raise RequestProblem(400, "bad_request", f"{fmt} must be a list of rows")
    for i, row in enumerate(rows):
        if isinstance(row, list):
            raise RequestProblem(422, "validation_error", f"{fmt}[{i}] is a list: name the columns "
                                                          "(records, columns or dataframe_split)")
        if isinstance(row, dict):
            rows[i] = {k: missing_value(v) for k, v in row.items()}
    return rows


# ------------------------------------------------------------------------------------- shared


def validate_rows(server: ModelServer, rows: list[Any], where) -> list[BaseModel]:
    """The /predict row schema over rows from another protocol; messages name ``where(row, column)``."""
    try:
        return server.schema.payload.model_validate({"instances": rows}).rows()
    except ValidationError as err:
        status, kind, message, details = _validation_problem(err)
        if status == 422:
            parts = []
            for e in err.errors(include_url=False, include_context=False)[:5]:
                loc = e["loc"]
                at = where(loc[1], loc[2]) if len(loc) >= 3 and loc[0] == "instances" else \
                    where(loc[1], None) if len(loc) == 2 and loc[0] == "instances" else _loc(loc)
                msg = {"extra_forbidden": "unknown field (not in the dataset spec's columns)",
                       "missing": "required field is missing"}.get(e["type"], e["msg"])
                parts.append(f"{at}: {msg}")
            message = "; ".join(parts) + (f" (and {len(err.errors()) - 5} more)" if len(err.errors()) > 5 else "")
        raise RequestProblem(status, kind, message, details) from None


def v2_general(server: ModelServer, body: bytes) -> tuple[str | None, dict[str, list], int]:
    """A V2 body the general way (envelope, then rows of ``/predict``'s row model): (its id,
    column -> values, rows), or the request's exact :class:`RequestProblem`."""
    try:
        req = V2Request.model_validate_json(body)
    except ValidationError as err:
        raise _envelope_problem(err, "an inference request") from None
    unknown = [o.name for o in req.outputs or [] if o.name != OUTPUT]
    if unknown:
        raise RequestProblem(400, "bad_request", f"unknown output(s) {unknown}; this model has {OUTPUT!r}")
    rows = validate_rows(server, v2_rows(server, req),
                         lambda i, col: f"input {col!r}, row {i}" if col else f"row {i}")
    return req.id, server.schema.columns_of(rows), len(rows)


def _envelope_problem(err: ValidationError, what: str) -> RequestProblem:
    errors = err.errors(include_url=False, include_context=False)
    if errors[0]["type"] in ("json_invalid", "json_type"):
        return RequestProblem(400, "invalid_json", "the body is not valid JSON: " + errors[0]["msg"])
    parts = "; ".join(f"{_loc(e['loc'])}: {e['msg']}" for e in errors[:5])
    return RequestProblem(400, "bad_request", f"not {what}: {parts}")


def _server_version() -> str:
    try:
        return metadata.version("mlops-loop")
    except metadata.PackageNotFoundError:
        return "0"


def add_protocol_routes(app: FastAPI, server: ModelServer) -> None:
    """Register the V2 and MLflow routes on the model server's app."""
    name = server.cfg.model_name
    spec = server.spec
    model_inputs = [{"name": c.name, "datatype": V2_DATATYPE[c.dtype], "shape": [-1]} for c in spec.feature_columns]
    optional = [c.name for c in spec.feature_columns if c.nullable] + [spec.key] + \
        ([spec.timestamp] if spec.timestamp and spec.timestamp != spec.key else [])
    what = "P(positive class)" if spec.task == "classification" else "the predicted value"
    v2_columns = V2Columns(server)

    def v2_error(request: Request, p: RequestProblem) -> Response:
        server.metrics.errors.labels(p.type).inc()
        return _json({"error": p.message}, p.status, p.headers)

    def mlflow_error(request: Request, p: RequestProblem) -> Response:
        server.metrics.errors.labels(p.type).inc()
        code = _MLFLOW_CODES.get(p.status, "INTERNAL_ERROR")
        return _json({"error_code": code, "message": p.message}, p.status, p.headers)

    # The handlers read the model and version from request.path_params instead of declaring them as
    # parameters: FastAPI's per-request parameter validation cost V2 ~9% of its throughput
    # (py-spy under bench/serving.py), for two strings compared right here.
    def check_model(request: Request) -> None:
        params = request.path_params
        model, version = params.get("model", params.get("endpoint", name)), params.get("version")
        if model != name:
            raise RequestProblem(404, "not_found", f"model {model!r} is not served here; this server serves {name!r}")
        if version is not None and version != server.model_version:
            raise RequestProblem(404, "not_found", f"version {version!r} of {name!r} is not served here; "
                                                   f"this server serves version {server.model_version}")

    def ready() -> bool:
        return server.status == "ready" and server.state is not None and server.worker_alive()

    # -- Open Inference Protocol ----------------------------------------------------------------

    @app.get("/v2")
    async def v2_server(request: Request):
        """V2 server metadata."""
        return _json({"name": "mlops-loop", "version": _server_version(), "extensions": []})

    @app.get("/v2/health/live")
    async def v2_live(request: Request):
        alive = server.worker_alive() or server.status == "draining"
        return _json({"live": alive}, 200 if alive else 503)

    @app.get("/v2/health/ready")
    async def v2_ready(request: Request):
        ok = ready()
        return _json({"ready": ok}, 200 if ok else 503)

    async def v2_metadata(request: Request):
        try:
            check_model(request)
        except RequestProblem as p:
            return v2_error(request, p)
        return _json({
            "name": name, "versions": [server.model_version], "platform": "sklearn",
            "inputs": model_inputs,
            "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [-1]}],
            "parameters": {"content_type": "pd", "dataset": spec.name, "task": spec.task, "output": what,
                           "optional_inputs": optional},
        })

    async def v2_model_ready(request: Request):
        try:
            check_model(request)
        except RequestProblem as p:
            return v2_error(request, p)
        ok = ready()
        return _json({"name": name, "ready": ok}, 200 if ok else 503)

    async def v2_infer(request: Request):
        with server.handling():
            try:
                check_model(request)
                if request.headers.get("inference-header-content-length"):
                    raise RequestProblem(400, "bad_request", "binary tensor data is not supported; send JSON "
                                                             "tensors (tritonclient: binary_data=False)")
                body = await read_json_body(request, server.cfg.max_body_bytes, untyped_is_json=True)
                req_id, columns, n = v2_columns.decode(body) or v2_general(server, body)
                version_, preds = await server.score_columns(request, columns, n)
            except RequestProblem as p:
                return v2_error(request, p)
        rid = request.scope["state"]["request_id"]
        return _json({
            "model_name": name, "model_version": version_, "id": req_id if req_id is not None else rid,
            "parameters": {"request_id": rid},
            "outputs": [{"name": OUTPUT, "datatype": "FP64", "shape": [len(preds)], "data": preds}],
        })

    # Each handler once with and once without /versions/{version}: the protocol has both forms.
    for path, handler, method in (("", v2_metadata, "GET"), ("/ready", v2_model_ready, "GET"),
                                  ("/infer", v2_infer, "POST")):
        app.add_api_route(f"/v2/models/{{model}}{path}", handler, methods=[method])
        app.add_api_route(f"/v2/models/{{model}}/versions/{{version}}{path}", handler, methods=[method])

    # -- MLflow scoring server --------------------------------------------------------------------

    async def invocations(request: Request):
        """MLflow scoring-server formats -> {"predictions": [...]}."""
        with server.handling():
            try:
                check_model(request)  # /endpoints/<name>/invocations names the model
                body = await read_json_body(request, server.cfg.max_body_bytes)
                try:
                    payload = pydantic_core.from_json(body)
                except ValueError as err:
                    raise RequestProblem(400, "invalid_json", f"the body is not valid JSON: {err}") from None
                fmt = next((k for k in MLFLOW_FORMATS if isinstance(payload, dict) and k in payload), "rows")
                rows = validate_rows(server, mlflow_rows(payload),
                                     lambda i, col: f"{fmt}[{i}].{col}" if col else f"{fmt}[{i}]")
                _, preds = await server.score_rows(request, rows)
            except RequestProblem as p:
                return mlflow_error(request, p)
        return _json({"predictions": preds})

    app.add_api_route("/invocations", invocations, methods=["POST"])
    app.add_api_route("/endpoints/{endpoint}/invocations", invocations, methods=["POST"])

    @app.get("/ping")
    async def ping(request: Request):
        """MLflow's health check: 200 once the model serves."""
        return Response("\n", status_code=200 if ready() else 503, media_type="application/json")
