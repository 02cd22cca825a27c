"""Caddy's JSON config for the deployment state: each model's routes and its proxy handler.

Pure functions of the state (and, in ``config_for``, of the environment knobs compose sets), so
tests check the config without a Caddy; include.edge.caddy loads it through the admin API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

from include.config import Settings
from include.edge.state import admin_socket, separate_edge

PUBLIC_PATHS = ("predict", "schema", "info", "health", "ready", "invocations", "ping")
HEALTH_INTERVAL = "1s"
PIN_HEADER = "X-Model-Version"
MAX_BODY_BYTES = 8 * 1024 * 1024  # the model server's own limit (MLOPS_SERVING_MAX_BODY_BYTES default)


def _dial(upstream: dict, unix: bool) -> str:
    if unix and upstream.get("socket"):
        return f"unix/{upstream['socket']}"
    url = urlparse(upstream["url"])
    return f"{url.hostname}:{url.port or 80}"


def _json_response(status: int, detail: str) -> dict:
    return {"handler": "static_response", "status_code": status,
            "headers": {"Content-Type": ["application/json"]},
            "body": json.dumps({"detail": detail})}


def _proxy(upstreams: list[dict], weights: list[int] | None, unix: bool) -> dict:
    # first healthy upstream wins: the active one, else the warm fallback; during a canary, a
    # weighted round robin (deterministic, so the canary's share is exact) over the healthy ones
    selection = {"policy": "first"} if not weights else {"policy": "weighted_round_robin", "weights": weights}
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": _dial(u, unix)} for u in upstreams],
        # a request whose connection failed is retried on another healthy upstream. Caddy retries
        # only GETs once the request was written (a server closing a pooled keep-alive connection
        # as it stops fails a POST that way), but every public path is a pure function of the model
        # and the input, so POSTs are retried too; the body is buffered (at most MAX_BODY_BYTES,
        # which the request_body handler enforces first) so that a retry resends all of it
        "load_balancing": {"selection_policy": selection, "try_duration": "3s", "try_interval": "100ms",
                           "retry_match": [{"method": ["GET", "POST", "HEAD"]}]},
        "request_buffers": MAX_BODY_BYTES,
        # no flush_interval: -1 (flush every write) made Caddy write each answer's headers and body
        # in two syscalls (a timer flushes the headers first); left out, it writes them once
        # (edge/direct 0.62 -> 0.69 and 0.66 -> 0.71 in A/B runs, Caddy 211 -> 187 us per request)
        "health_checks": {
            "active": {"uri": "/ready", "interval": HEALTH_INTERVAL, "timeout": "1s"},
            "passive": {"fail_duration": "3s", "max_fails": 1},
        },
    }


def _model_routes(model: str, route: dict, *, plain: bool, unix: bool) -> list[dict]:
    """Caddy routes of one model: pinned versions first, then the prefixed and (if plain) root paths."""
    canary = route.get("canary") or {}
    if canary.get("upstream"):
        # the canary's share goes to the new version, the rest to the champion (the old fallback
        # sits out the canary: two live versions are enough to compare)
        upstreams = [route["active"], canary["upstream"]]
        share = round(float(canary["weight"]) * 100)
        weights = [100 - share, share]
    else:
        upstreams = [u for u in (route.get("active"), route.get("fallback")) if u]
        weights = None
    paths = [f"/models/{model}/{p}" for p in PUBLIC_PATHS] + [f"/v2/models/{model}", f"/v2/models/{model}/*"]
    if plain:
        paths += [f"/{p}" for p in PUBLIC_PATHS] + ["/v2", "/v2/*"]
    limit = {"handler": "request_body", "max_size": MAX_BODY_BYTES}
    # (paths, how the path is rewritten for the model server): /models/<m>/x -> /x; MLflow's
    # deployments client posts to /endpoints/<m>/invocations -> /invocations
    groups = [(paths, {"handler": "rewrite", "strip_path_prefix": f"/models/{model}"}),
              ([f"/endpoints/{model}/invocations"], {"handler": "rewrite", "uri": "/invocations"})]
    running = sorted({str(u.get("version")) for u in upstreams})
    routes = []
    for group_paths, rewrite in groups:
        for u in upstreams:
            routes.append({"match": [{"path": group_paths, "header": {PIN_HEADER: [str(u.get("version"))]}}],
                           "handle": [limit, rewrite, _proxy([u], None, unix)], "terminal": True})
        routes.append({"match": [{"path": group_paths, "header_regexp": {PIN_HEADER: {"pattern": ".+"}}}],
                       "handle": [_json_response(404, f"{model}: the pinned version does not run here; "
                                                       f"running: {running}")], "terminal": True})
        routes.append({"match": [{"path": group_paths}], "handle": [limit, rewrite, _proxy(upstreams, weights, unix)],
                       "terminal": True})
    return routes


def caddy_config(state: dict, *, listen: str, admin: Path, admin_mode: str | None = None,
                 internal: str | None = None, unix_upstreams: bool = False) -> dict:
    """Caddy's JSON config for the deployment state (pure: tests check it without a Caddy).

    ``admin_mode`` (e.g. ``0660``) sets the admin socket's file mode when another container must
    reach it; ``internal`` (e.g. ``:2020``) adds a listener that is never published, for the edge's
    own ``/health`` and Caddy's Prometheus ``/metrics`` (per-upstream health and request counts).
    ``unix_upstreams``: proxy to an upstream's unix ``socket`` where it has one (an edge on the
    servers' host), else to its URL.
    """
    deployed = {m: r for m, r in sorted(state["models"].items()) if r.get("active")}
    routes: list[dict] = []
    for model, route in deployed.items():
        routes += _model_routes(model, route, plain=len(deployed) == 1, unix=unix_upstreams)
    if not deployed:
        fallback = _json_response(503, "no model deployed yet")
    else:
        fallback = _json_response(404, f"not a public route; {len(deployed)} model(s) deployed: use "
                                       f"/models/<model>/predict (or /schema, /info) with one of {sorted(deployed)}")
    routes.append({"handle": [fallback], "terminal": True})
    servers = {"edge": {
        "listen": [listen],
        "routes": routes,
        "automatic_https": {"disable": True},
        # slow or huge requests are cut at the edge, before they reach a model server
        "read_timeout": "30s", "write_timeout": "60s", "idle_timeout": "2m",
        "max_header_bytes": 65536,
    }}
    if internal:
        servers["internal"] = {"listen": [internal], "automatic_https": {"disable": True}, "routes": [
            {"match": [{"path": ["/metrics"]}], "handle": [{"handler": "metrics"}], "terminal": True},
            {"match": [{"path": ["/health"]}], "handle": [{
                "handler": "static_response", "status_code": 200, "headers": {"Content-Type": ["application/json"]},
                "body": json.dumps({"status": "ok", "models": sorted(deployed)})}], "terminal": True},
        ]}
    return {
        "admin": {"listen": f"unix/{admin}" + (f"|{admin_mode}" if admin_mode else "")},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        # Caddy's per-request metrics are collected only where something scrapes them (the internal
        # listener, compose); the embedded edge publishes none, so it records none
        "apps": {"http": {**({"metrics": {}} if internal else {}), "servers": servers}},
    }


def listen_address(s: Settings) -> str:
    host = os.environ.get("MLOPS_EDGE_HOST", "127.0.0.1").strip()
    return f"{host}:{s.serving_port}"


def config_for(state: dict, s: Settings) -> dict:
    """The config this deployment loads: environment knobs (compose sets them) applied."""
    # an edge of its own runs in another container, where the local servers' abstract sockets
    # do not exist; the embedded one shares their host
    return caddy_config(state, listen=listen_address(s), admin=admin_socket(s),
                        admin_mode=os.environ.get("MLOPS_EDGE_ADMIN_MODE", "").strip() or None,
                        internal=os.environ.get("MLOPS_EDGE_INTERNAL", "").strip() or None,
                        unix_upstreams=not separate_edge())

