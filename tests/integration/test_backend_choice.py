"""MLOPS_DEPLOY_BACKEND=auto picks Docker only when the serving image can really be built there."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.integration


def _backend(monkeypatch, **env):
    from include.deployment import get_backend

    monkeypatch.setenv("MLOPS_DEPLOY_BACKEND", "auto")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return get_backend()


def test_auto_without_an_engine_is_local_and_says_why(monkeypatch, tmp_path, caplog):
    backend = _backend(monkeypatch, DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock")
    assert backend.name == "local"
    assert "no Docker engine answers" in caplog.text


def _engine_or_skip():
    from include.deployment import docker_available

    if not docker_available():
        if os.environ.get("CI"):
            pytest.fail("CI needs a Docker engine (tools/docker_setup.sh)")
        pytest.skip("no Docker engine reachable")


def test_auto_with_an_engine_but_no_base_image_is_local(monkeypatch, caplog):
    _engine_or_skip()
    backend = _backend(monkeypatch, MLOPS_SERVING_BASE_IMAGE="mlops-no-such-base:missing")
    assert backend.name == "local"
    assert "mlops-no-such-base:missing is not on the engine and cannot be pulled" in caplog.text


def test_auto_with_an_engine_and_the_base_image_is_docker(monkeypatch, caplog):
    _engine_or_skip()
    base = os.environ.get("MLOPS_SERVING_BASE_IMAGE", "mlops-base:bookworm")
    backend = _backend(monkeypatch, MLOPS_SERVING_BASE_IMAGE=base)
    assert backend.name == "docker", caplog.text
