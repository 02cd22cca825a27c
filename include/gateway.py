"""The serving gateway: one stable endpoint in front of blue/green model servers, per model.

Every dataset's registered model has its own route, ``/models/<model>/...`` (``predict``,
``schema``, ``info``, ...), and its Open Inference Protocol paths ``/v2/models/<model>/...``; the
plain paths (``/predict``, ``/invocations``, ``/v2``, ``/v2/health/*``) reach the model when
exactly one is deployed. Deploying or rolling back one model never touches another's route.

Why a gateway (and not only a hot model swap inside one server): infra validation and the switch
must be able to fail without touching what is serving. The new version runs in its own container
(or process) next to the old one; the gateway flips its upstream pointer atomically once the new
one is ready, so requests in flight finish on the old upstream and new ones go to the new one:
zero failed requests. The old upstream keeps running through a drain period, and stays the
fallback:

* a request whose upstream connection fails is retried once on the fallback (a container that
  dies between health checks costs no failed request);
* a background health check probes the active upstream every ``interval`` seconds; after
  ``failures`` misses in a row it switches back to the fallback (automatic rollback) and records it.

State (per model: active + fallback upstream; a shared history) is a JSON file, so the deploy task (another process)
reads and changes it through the admin API, and a restarted gateway resumes where it was.

Run: ``python -m include.gateway --port 8700`` (admin token: ``include.config.admin_token()``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

# at module level: FastAPI resolves the (string) annotations of the handlers in this namespace
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

log = logging.getLogger("mlops.gateway")

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization",
               "content-length", "host"}


class GatewayState:
    """Per registered model: the active upstream and its fallback; one shared event history."""

    def __init__(self, path: Path):
        self.path = path
        self.models: dict[str, dict] = {}
        self.events: list[dict] = []
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except (OSError, UnicodeDecodeError, ValueError) as err:
            # a corrupt state file must not keep the edge down: start empty, the next deploy
            # (or `python -m include.deployment recover`) re-registers what is running
            log.warning("gateway: state file %s is unreadable (%s); starting with no routes", path, err)
            data = {}
            if self.path.exists():
                self.path.replace(self.path.with_suffix(".corrupt"))  # kept for a post-mortem
        if "active" in data and data.get("active"):  # the single-model format of earlier releases
            data = {"models": {data["active"].get("model", "default"): data}, "events": data.get("events", [])}
        for model, route in (data.get("models") or {}).items():
            self.models[model] = {"active": route.get("active"), "fallback": route.get("fallback")}
        self.events = data.get("events", [])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"models": self.models, "events": self.events[-200:]}, indent=2))
        tmp.replace(self.path)

    def route(self, model: str) -> dict:
        return self.models.get(model) or {"active": None, "fallback": None}

    def switch(self, model: str, upstream: dict, *, why: str) -> None:
        previous = self.route(model)["active"]
        self.models[model] = {"active": upstream, "fallback": previous}
        self.events.append({"time": time.time(), "event": "switch", "model": model, "why": why,
                            "to": upstream, "from": previous})
        self.save()
        log.warning("gateway: %s switched to %s (%s)", model, upstream, why)

    def view(self) -> dict:
        return {"models": self.models, "events": self.events[-20:]}


def create_app(state_path: Path, *, admin_token: str | None, interval: float = 1.0, failures: int = 3):
    import httpx

    state = GatewayState(state_path)
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=2.0),
                               limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))

    async def probe(upstream: dict) -> bool:
        try:
            r = await client.get(upstream["url"].rstrip("/") + "/ready", timeout=2.0)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def health_loop():
        misses: dict[str, int] = {}
        while True:
            await asyncio.sleep(interval)
            for model, route in list(state.models.items()):
                active, fallback = route["active"], route["fallback"]
                if not active:
                    continue
                if await probe(active):
                    misses[model] = 0
                    continue
                misses[model] = misses.get(model, 0) + 1
                log.warning("gateway: %s upstream %s failed health check (%d/%d)",
                            model, active.get("url"), misses[model], failures)
                if misses[model] >= failures and fallback and await probe(fallback):
                    state.switch(model, fallback, why=f"auto-rollback: v{active.get('version')} unhealthy")
                    misses[model] = 0

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(health_loop())
        yield
        task.cancel()
        await client.aclose()

    app = FastAPI(title="mlops-loop gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    def authorised(request: Request) -> bool:
        return bool(admin_token) and request.headers.get("authorization") == f"Bearer {admin_token}"

    @app.get("/_gateway/status")
    async def status():
        return state.view()

    @app.post("/_gateway/switch")
    async def switch(request: Request):
        if not authorised(request):
            return JSONResponse({"detail": "admin token required (Authorization: Bearer ...)"}, status_code=401)
        body = await request.json()
        # the rest of the body (version, backend, instance id, ...) is kept as the upstream's record
        upstream = {k: v for k, v in body.items() if k not in ("why", "require_ready")}
        if not isinstance(upstream.get("url"), str) or not isinstance(upstream.get("model"), str):
            return JSONResponse({"detail": "body needs 'model' and 'url' (and 'version', 'backend', 'id')"},
                                status_code=400)
        if body.get("require_ready", True) and not await probe(upstream):
            return JSONResponse({"detail": f"upstream {upstream['url']} is not ready; not switching"},
                                status_code=409)
        state.switch(upstream["model"], upstream, why=body.get("why", "deploy"))
        return state.view()

    async def forward(model: str, path: str, request: Request) -> Response:
        route = state.route(model)
        if not route["active"]:
            return JSONResponse({"detail": f"model {model!r} is not deployed; deployed: {sorted(state.models)}"},
                                status_code=404 if state.models else 503)
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        targets = [route["active"]] + ([route["fallback"]] if route["fallback"] else [])
        last_error = None
        for upstream in targets:
            url = upstream["url"].rstrip("/") + "/" + path
            try:
                r = await client.request(request.method, url, content=body, headers=headers,
                                         params=request.query_params)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as err:
                # Only transport failures are retried on the fallback: the request never reached a
                # model (or the model process died); an HTTP error answer is the model's answer.
                last_error = err
                continue
            out = {k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS | {"content-encoding"}}
            return Response(r.content, status_code=r.status_code, headers=out)
        return JSONResponse({"detail": f"no upstream of {model} answered: {last_error}"}, status_code=502)

    @app.api_route("/models/{model}/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def per_model(model: str, path: str, request: Request):
        return await forward(model, path, request)

    # The Open Inference Protocol names the model in its own path: forwarded unchanged to that
    # model's server (which answers /v2/models/<its name>/...). /v2, /v2/health/* and
    # /invocations fall through to the only-one-model rule below.
    @app.api_route("/v2/models/{model}", methods=["GET"])
    async def v2_model(model: str, request: Request):
        return await forward(model, f"v2/models/{model}", request)

    @app.api_route("/v2/models/{model}/{path:path}", methods=["GET", "POST"])
    async def v2_per_model(model: str, path: str, request: Request):
        return await forward(model, f"v2/models/{model}/{path}", request)

    # MLflow's deployments client (get_deploy_client("http://edge").predict(endpoint=<model>, ...))
    # posts to /endpoints/<endpoint>/invocations.
    @app.post("/endpoints/{model}/invocations")
    async def mlflow_endpoint(model: str, request: Request):
        return await forward(model, "invocations", request)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def only_model(path: str, request: Request):
        deployed = sorted(m for m, r in state.models.items() if r["active"])
        if not deployed:
            return JSONResponse({"detail": "no model deployed yet"}, status_code=503)
        if len(deployed) > 1:
            return JSONResponse({"detail": f"{len(deployed)} models are deployed: use /models/<model>/{path} "
                                           f"with one of {deployed}"}, status_code=404)
        return await forward(deployed[0], path, request)

    return app


def main() -> None:
    from include.config import admin_token, settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=settings().serving_port)
    ap.add_argument("--state", default=str(settings().state_dir / "deploy" / "gateway.json"))
    args = ap.parse_args()
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = create_app(Path(args.state), admin_token=admin_token())
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
