"""Prometheus metrics of one model server, and the middleware that names every response and counts it.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:  # pragma: no cover
    from include.serving.batcher import ModelServer

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


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


class ObserveRequests:
    """ASGI middleware: request id, ``X-Model-Name``/``X-Model-Version`` headers, request count and latency."""

    def __init__(self, app, *, server: ModelServer, endpoints: set[str]):
        self.app = app
        self.server = server
        self.model_name = server.cfg.model_name
        self.endpoints = endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        server, model_name, metrics = self.server, self.model_name, self.server.metrics
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
            endpoint = path if path in self.endpoints else "other"
            metrics.requests.labels(endpoint, scope["method"], str(status[0])).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
