"""The gateway routes every deployed model on its own path, over real HTTP (uvicorn servers)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.services import free_port, wait_http

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token"


def _serve(app) -> tuple[str, object]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    return url, server


def _model_server(name: str, version: str):
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ready")
    def ready():
        return {"ready": True}

    @app.post("/predict")
    def predict():
        return {"model_name": name, "model_version": version}

    return _serve(app)


@pytest.fixture
def gateway(tmp_path):
    from include.gateway import create_app

    url, server = _serve(create_app(tmp_path / "gateway.json", admin_token=TOKEN, interval=0.2))
    wait_http(url + "/_gateway/status")
    yield url
    server.should_exit = True


def _switch(gateway: str, upstream: dict) -> httpx.Response:
    return httpx.post(f"{gateway}/_gateway/switch", json=upstream, headers={"Authorization": f"Bearer {TOKEN}"})


def test_each_model_has_its_own_route_and_plain_paths_need_exactly_one(gateway):
    assert httpx.post(f"{gateway}/predict").status_code == 503  # nothing deployed yet
    a_url, a = _model_server("clf", "1")
    b_url, b = _model_server("reg", "7")
    try:
        wait_http(a_url + "/ready"), wait_http(b_url + "/ready")
        assert _switch(gateway, {"model": "clf", "version": "1", "url": a_url}).status_code == 200
        # one model: the plain path reaches it
        assert httpx.post(f"{gateway}/predict").json() == {"model_name": "clf", "model_version": "1"}
        assert _switch(gateway, {"model": "reg", "version": "7", "url": b_url}).status_code == 200
        assert httpx.post(f"{gateway}/models/clf/predict").json()["model_name"] == "clf"
        assert httpx.post(f"{gateway}/models/reg/predict").json() == {"model_name": "reg", "model_version": "7"}
        plain = httpx.post(f"{gateway}/predict")
        assert plain.status_code == 404 and "/models/<model>/predict" in plain.json()["detail"]
        unknown = httpx.post(f"{gateway}/models/nope/predict")
        assert unknown.status_code == 404 and "'clf', 'reg'" in unknown.json()["detail"]
        # switching one model leaves the other's route alone
        routes = httpx.get(f"{gateway}/_gateway/status").json()["models"]
        assert routes["clf"]["active"]["url"] == a_url and routes["reg"]["active"]["url"] == b_url
        # a switch must say which model it is for
        assert _switch(gateway, {"version": "2", "url": a_url}).status_code == 400
    finally:
        a.should_exit = b.should_exit = True


def test_a_dead_upstream_falls_back_per_model(gateway):
    a_url, a = _model_server("clf", "1")
    a2_url, a2 = _model_server("clf", "2")
    try:
        wait_http(a_url + "/ready"), wait_http(a2_url + "/ready")
        _switch(gateway, {"model": "clf", "version": "1", "url": a_url})
        _switch(gateway, {"model": "clf", "version": "2", "url": a2_url})
        a2.should_exit = True  # v2 dies: its health checks fail and the route goes back to v1
        deadline = time.time() + 20
        while time.time() < deadline:
            active = httpx.get(f"{gateway}/_gateway/status").json()["models"]["clf"]["active"]
            if active["version"] == "1":
                break
            time.sleep(0.2)
        assert active["version"] == "1"
        assert httpx.post(f"{gateway}/models/clf/predict").json()["model_version"] == "1"
    finally:
        a.should_exit = a2.should_exit = True


@pytest.mark.parametrize("content", [b"\xff\xfe garbage", b"", b"[1, 2]"])
def test_a_corrupt_state_file_starts_an_empty_gateway_instead_of_none(tmp_path, content):
    from include.gateway import GatewayState

    path = tmp_path / "gateway.json"
    path.write_bytes(content)
    state = GatewayState(path)
    assert state.models == {}
    assert path.with_suffix(".corrupt").read_bytes() == content  # kept for a post-mortem


def test_the_single_model_state_of_earlier_releases_is_read(tmp_path):
    from include.gateway import GatewayState

    path = tmp_path / "gateway.json"
    up = {"model": "sessions_purchase", "version": "3", "url": "http://127.0.0.1:1"}
    path.write_text(json.dumps({"active": up, "fallback": None, "events": []}))
    assert GatewayState(path).route("sessions_purchase")["active"] == up
