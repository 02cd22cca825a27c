"""Steps 3-5 of a deploy: start the new server next to the champion and give it traffic
(:func:`start_release`), then move the ``champion`` alias (:func:`promote`), or undo whatever the
version got (:func:`rollback`). Also the idempotency check of a deploy run and `make stop`.
"""

from __future__ import annotations

import logging
import time

from include.config import Settings, settings
from include.deployment.audit import audit, read_audit
from include.deployment.backends import backend_for
from include.deployment.errors import DeployError
from include.deployment.gateway import (
    ensure_gateway,
    gateway_route,
    gateway_switch,
    http,
    stop_gateway,
    wait_ready,
)

log = logging.getLogger(__name__)


def start_release(model: str, version: str, dataset: str, image: str | None, backend, *,
                  canary_weight: float = 0.0, watch_s: float = 5.0) -> dict:
    """Start the new server next to the champion and give it traffic: a canary share of it
    (``canary_weight`` > 0 and a champion serves) or all of it at once; undo on failure.

    A version that already runs as the model's warm fallback (a rollback to the previous
    champion) is reused instead of started again.
    """
    from include.canary import now_iso, snapshot
    from include.edge import start_canary

    s = backend.s
    ensure_gateway(s)
    previous, fallback = gateway_route(model, s)
    reused = fallback if fallback and fallback.get("version") == str(version) and backend_for(fallback, s).alive(fallback) \
        else None
    instance = reused or backend.start(image, model, version, dataset)
    before: dict = {}
    canary = canary_weight > 0 and previous is not None and previous.get("version") != str(version)
    try:
        wait_ready(instance["url"], alive=lambda: backend_for(instance, s).alive(instance))
        if canary:
            baseline = {"canary": snapshot(instance), "champion": snapshot(previous)}
            started = now_iso()
            start_canary(instance, canary_weight, why=f"canary of {model} v{version}", s=s)
            return {"instance": instance, "previous": previous, "phase": "canary", "weight": canary_weight,
                    "baseline": baseline, "started": started, "dropped": None if reused else fallback}
        before = gateway_switch(instance, why=f"deploy {model} v{version}", s=s)
        deadline = time.time() + watch_s
        while time.time() < deadline:
            if not backend_for(instance, s).alive(instance):
                raise DeployError(f"{model} v{version} died {watch_s - (deadline - time.time()):.1f}s after the switch")
            time.sleep(0.25)
        r = http("GET", instance["url"] + "/ready")
        if r.status_code != 200:
            raise DeployError(f"{model} v{version} is not ready after the switch: {r.status_code} {r.text[:200]}")
    except Exception:
        if reused is None:
            _undo_switch(instance, previous, backend)
        elif previous:
            gateway_switch(previous, why=f"undo the switch to v{version}", s=s, require_ready=False)
        raise
    # the previous server stays warm as the fallback; the one that was the fallback before is no
    # longer routed and is stopped once the deploy is promoted
    dropped = before.get("fallback")
    if dropped and dropped.get("url") == instance["url"]:
        dropped = None
    return {"instance": instance, "previous": previous, "phase": "switched", "dropped": dropped}


def _undo_switch(instance: dict, previous: dict | None, backend) -> None:
    from include.edge import forget

    s = backend.s
    active = gateway_route(instance["model"], s)[0] or {}
    if previous and active.get("url") == instance["url"]:
        gateway_switch(previous, why=f"rollback from v{instance['version']}", s=s, require_ready=False)
    forget(instance["model"], instance, s=s)
    backend.stop(instance)


def promote(model: str, version: str, release: dict, *, trigger: dict, drain_s: float = 2.0,
            analysis: dict | None = None, rollback_of: str | None = None) -> dict:
    """All traffic to the new version (ending its canary), then move the ``champion`` alias and
    record it; the old champion's server stays warm as the edge's fallback (until the next
    deploy), the one before it is stopped.

    ``rollback_of``: this deploy is a manual rollback (the ``rollback_to`` Param) away from that
    version; it is audited as ``rolled_back``.
    """
    from include.tracking import alias_version, client, configure_mlflow, with_retry

    s = settings()
    configure_mlflow()
    c = client()
    instance, dropped = release["instance"], release.get("dropped")
    gateway_switch(instance, why=f"promote {model} v{version}", s=s)
    old = alias_version(model, "champion")
    with_retry(c.set_registered_model_alias, model, "champion", str(version))
    with_retry(c.set_model_version_tag, model, str(version), "deployed_at",
               time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    record = {"event": "deployed", "model": model, "version": str(version), "previous_champion": old,
              "endpoint": s.gateway_url, "instance": instance, "trigger": trigger}
    if analysis is not None:
        record["canary"] = analysis
    if rollback_of is not None:
        record = {**record, "event": "rolled_back", "automatic": False, "from": rollback_of,
                  "reason": f"rollback_to v{version} requested by {trigger.get('user') or 'run ' + str(trigger.get('dag_run_id'))}",
                  "serving": str(version)}
    audit(record, s)
    if dropped and dropped.get("url") != instance["url"]:
        time.sleep(drain_s)  # requests already routed to it finish
        backend_for(dropped, s).stop(dropped)
    return {"model": model, "version": str(version), "endpoint": s.gateway_url,
            "backend": instance["backend"], "previous_champion": old, "instance": instance}


def rollback(model: str, version: str, *, reason: str, trigger: dict | None = None,
             automatic: bool = True) -> dict:
    """Undo whatever ``version`` got: its canary share, or the edge's route and the ``champion``
    alias (back to the warm fallback, the previous champion); its server is stopped.

    Idempotent: a second call for the same run finds nothing to undo and records nothing more.
    """
    from include.edge import canary as edge_canary
    from include.edge import end_canary as edge_end_canary
    from include.edge import forget
    from include.tracking import alias_version, client, configure_mlflow, with_retry

    s = settings()
    configure_mlflow()
    undone: list[str] = []
    c = (edge_canary(model, s) or {}).get("upstream")
    if c and c.get("version") == str(version):
        edge_end_canary(model, why=f"rollback: {reason}", s=s)
        forget(model, c, s=s)
        backend_for(c, s).stop(c)
        undone.append("canary ended")
    active, fallback = gateway_route(model, s)
    active = active or {}
    restored = None
    if active.get("version") == str(version) and fallback:
        gateway_switch(fallback, why=f"rollback: {reason}", s=s, require_ready=False)
        forget(model, active, s=s)
        backend_for(active, s).stop(active)
        restored = fallback.get("version")
        undone.append(f"edge back to v{restored}")
    champion = alias_version(model, "champion")
    if champion == str(version) and restored:
        # the alias follows what serves: `champion` always names a version that answers
        with_retry(client().set_registered_model_alias, model, "champion", str(restored))
        undone.append(f"champion alias back to v{restored}")
    serving = restored or (active.get("version") if active.get("version") != str(version) else None)
    run_id = (trigger or {}).get("dag_run_id")
    if not undone and run_id and any(r.get("event") == "rolled_back" and r.get("version") == str(version)
                                     and (r.get("trigger") or {}).get("dag_run_id") == run_id
                                     for r in read_audit(s, model)):
        return {"serving": serving, "reason": reason, "undone": []}
    audit({"event": "rolled_back", "model": model, "version": str(version), "reason": reason,
           "automatic": automatic, "undone": undone, "serving": serving, "trigger": trigger or {}}, s)
    log.warning("rolled back %s v%s (%s): %s", model, version, reason, ", ".join(undone) or "nothing was serving it")
    return {"serving": serving, "reason": reason, "undone": undone}


def already_deployed(model: str, version: str) -> bool:
    """Idempotency: the version is champion AND the gateway serves it."""
    from include.tracking import alias_version, configure_mlflow

    configure_mlflow()
    champion = alias_version(model, "champion")
    if champion is None:
        return False
    active = gateway_route(model)[0] or {}
    if str(champion) != str(version) or active.get("version") != str(version):
        return False
    try:
        return http("GET", active["url"] + "/ready", timeout=2.0).status_code == 200
    except Exception:  # noqa: BLE001
        return False


def stop_all(s: Settings | None = None) -> list[str]:
    """Stop the servers the edge routes to and the edge itself (`make stop`).

    The routes come from the state dir's own edge file, so this works even when the caller's
    environment names another port (or the edge is already down). The routes are cleared: the
    next deploy starts from an empty edge, and `champion` still names what to redeploy.
    """
    from include.edge import clear, read_state

    s = s or settings()
    # this state dir's own edge state: never another state dir's edge that happens to answer
    routes = read_state(s)["models"]
    stopped = []
    for model, route in routes.items():
        for inst in (route.get("active"), route.get("fallback"), (route.get("canary") or {}).get("upstream")):
            if inst:
                backend_for(inst, s).stop(inst)
                stopped.append(f"{model} v{inst.get('version')} ({inst.get('backend')} {inst.get('url')})")
    stop_gateway(s)
    clear(s)
    return stopped
