"""What deploys do to the edge: switch a model's route, run and end a canary, forget a stopped
server, clear every route; and the lookups of a model's route and canary.

Each operation changes the state file and loads the resulting config in one critical section, so
the file and the running Caddy never disagree for another deploy task.
"""

from __future__ import annotations

import logging
import time

from include.config import Settings, settings
from include.edge.caddy import EdgeError, admin_answers, ensure_edge, load_config
from include.edge.state import locked, read_state, status, write_state

log = logging.getLogger(__name__)


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
    with locked(s):
        state = read_state(s)
        before = dict(state["models"].get(model) or {"active": None, "fallback": None})
        fallback = before.get("active") if (before.get("active") or {}).get("url") != upstream["url"] \
            else before.get("fallback")
        # a switch ends any canary: to the canary it promotes it, to anything else it drops it
        state["models"][model] = {"active": upstream, "fallback": fallback, "canary": None}
        state["events"].append({"time": time.time(), "event": "switch", "model": model, "why": why,
                                "to": upstream, "from": before.get("active")})
        write_state(s, state)
        load_config(s, state)
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
    with locked(s):
        state = read_state(s)
        before = dict(state["models"].get(model) or {})
        if not before.get("active"):
            raise EdgeError(f"{model} has no active server to compare a canary with")
        state["models"][model] = {**before, "canary": {"upstream": upstream, "weight": float(weight)}}
        state["events"].append({"time": time.time(), "event": "canary", "model": model, "why": why,
                                "to": upstream, "weight": float(weight)})
        write_state(s, state)
        load_config(s, state)
    log.warning("edge: %s canary v%s at %s gets %.0f%% of the traffic (%s)", model, upstream.get("version"),
                upstream["url"], weight * 100, why)
    return before


def end_canary(model: str, *, why: str, s: Settings | None = None) -> dict | None:
    """Stop routing to the model's canary (all traffic back to the active server); returns it."""
    s = s or settings()
    with locked(s):
        state = read_state(s)
        r = state["models"].get(model) or {}
        canary = (r.get("canary") or {}).get("upstream")
        if canary is None:
            return None
        r["canary"] = None
        state["events"].append({"time": time.time(), "event": "canary_ended", "model": model, "why": why,
                                "from": canary})
        write_state(s, state)
        if admin_answers(s):
            load_config(s, state)
    log.warning("edge: %s canary v%s ended (%s)", model, canary.get("version"), why)
    return canary


def canary(model: str, s: Settings | None = None) -> dict | None:
    """{"upstream", "weight"} of the model's running canary, else None."""
    return (status(s)["models"].get(model) or {}).get("canary")


def forget(model: str, upstream: dict, *, s: Settings | None = None) -> None:
    """Stop routing to ``upstream`` (it is being stopped): drop it as the model's fallback."""
    s = s or settings()
    with locked(s):
        state = read_state(s)
        r = state["models"].get(model) or {}
        changed = False
        if (r.get("fallback") or {}).get("url") == upstream.get("url"):
            r["fallback"], changed = None, True
        if ((r.get("canary") or {}).get("upstream") or {}).get("url") == upstream.get("url"):
            r["canary"], changed = None, True
        if changed:
            write_state(s, state)
            if admin_answers(s):
                load_config(s, state)


def clear(s: Settings | None = None) -> None:
    """Forget every route (their servers were stopped); the history stays."""
    s = s or settings()
    with locked(s):
        state = read_state(s)
        state["models"] = {}
        state["events"].append({"time": time.time(), "event": "cleared"})
        write_state(s, state)

