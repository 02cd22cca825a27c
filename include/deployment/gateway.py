"""The deploy steps' view of the serving edge (Caddy, include/edge/): routes, switches, and the
readiness of a server before it gets traffic. Edge errors become :class:`DeployError`, so a
failed switch fails the deploy step that asked for it.
"""

from __future__ import annotations

import time

from include.config import Settings, settings
from include.deployment.errors import DeployError


def http(method: str, url: str, *, body: dict | None = None, token: str | None = None, timeout: float = 5.0):
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, url, json=body, headers=headers, timeout=timeout)


def wait_ready(url: str, timeout: float = 90.0, alive=lambda: True) -> None:
    import httpx

    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        if not alive():
            raise DeployError(f"server for {url} exited before it became ready ({last})")
        try:
            r = httpx.get(url.rstrip("/") + "/ready", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"/ready answered {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as err:
            last = str(err)
        time.sleep(0.3)
    raise DeployError(f"{url} not ready after {timeout:.0f}s: {last}")


def gateway_route(model: str, s: Settings | None = None) -> tuple[dict | None, dict | None]:
    """(active, fallback) upstream records of ``model`` on the edge; (None, None) if not routed."""
    from include.edge import route

    return route(model, s)


def gateway_status(s: Settings | None = None) -> dict | None:
    """The edge's routes (``{"models": ...}``) when its process answers, else None."""
    from include.edge import admin_answers, status

    s = s or settings()
    return status(s) if admin_answers(s) else None


def ensure_gateway(s: Settings | None = None) -> dict:
    """Start the edge (Caddy) if it does not answer, with the routes of the current state."""
    from include.edge import EdgeError, ensure_edge

    try:
        return ensure_edge(s)
    except EdgeError as err:
        raise DeployError(str(err)) from err


def gateway_switch(upstream: dict, *, why: str, s: Settings | None = None, require_ready: bool = True) -> dict:
    """Route the upstream's model to it; returns the model's route before the switch."""
    from include.edge import EdgeError, switch

    try:
        return switch(upstream, why=why, s=s, require_ready=require_ready)
    except EdgeError as err:
        raise DeployError(f"the edge refused the switch to {upstream.get('url')}: {err}") from err


def stop_gateway(s: Settings | None = None) -> None:
    """Stop this state dir's edge process (tests, `make stop`, `make clean-state`)."""
    from include.edge import stop_edge

    stop_edge(s)
