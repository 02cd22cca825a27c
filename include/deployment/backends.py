"""Where model servers run: ``local`` (uvicorn processes under a supervisor on this machine) or
``docker`` (containers on an engine, through the Airflow Docker provider), and how ``auto`` picks
between them. A backend builds (or not) an image, starts a server and returns its instance record
(``backend``, ``id``, ``url``, ``model``, ``version``, ``port``), tells whether it is alive, stops it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from include.config import PROJECT_ROOT, Settings, admin_token, settings
from include.deployment.errors import DeployError

log = logging.getLogger(__name__)

SERVING_IMAGE = "mlops-serving"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_env(model: str, version: str, dataset: str, s: Settings) -> dict[str, str]:
    from include.infra_validation import CREDENTIAL_PREFIXES

    return {
        # serving knobs (batching, prediction-log flushing, limits) and the store credentials (S3,
        # and MLflow's username/password/token: the server loads its model from an MLflow that may
        # require them) follow the deployer's env, as infra validation's do; the URIs are settings'
        **{k: v for k, v in os.environ.items()
           if k.startswith(("MLOPS_SERVING_", "MLOPS_PREDLOG_", *CREDENTIAL_PREFIXES)) and k != "MLOPS_SERVING_PORT"},
        "MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
        "MLFLOW_REGISTRY_URI": s.mlflow_registry_uri,
        "MLOPS_MODEL_NAME": model,
        "MLOPS_MODEL_VERSION": str(version),
        "MLOPS_DATASET": dataset,
        "MLOPS_PREDICTIONS_DIR": str(s.predictions_dir),
        "MLOPS_STATE_DIR": str(s.state_dir),
        "MLOPS_ADMIN_TOKEN": admin_token(s),
    }


@dataclass
class LocalBackend:
    """uvicorn processes on this machine: the embedded default when no Docker engine answers."""

    s: Settings
    name: str = "local"

    def build(self, model: str, version: str) -> str | None:
        return None  # the code is already installed in this venv

    def start(self, image, model: str, version: str, dataset: str) -> dict:
        port = free_port()
        logs = self.s.state_dir / "deploy" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{model}-v{version}-{port}.log", "ab")  # noqa: SIM115 - owned by the child
        # an abstract unix socket next to the port: the embedded edge (same host) proxies to it,
        # which costs the edge and the server less CPU than a TCP hop (bench/serving.py: edge/direct
        # 0.70 -> 0.76, Caddy 167 -> 150 us per request); the port serves everything else
        unix = f"@mlops-serving-{port}"
        # under a supervisor: a server that dies is restarted on the same port (Docker's restart
        # policy, for the embedded mode); stopping the process group stops both
        proc = subprocess.Popen(
            [sys.executable, "-m", "include.serving.supervise", "--",
             sys.executable, "-m", "include.serving", "--host", "127.0.0.1", "--port", str(port),
             "--unix-socket", unix, "--log-level", "warning"],
            env={**os.environ, **serving_env(model, version, dataset, self.s)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT,
        )
        return {"backend": self.name, "id": str(proc.pid), "url": f"http://127.0.0.1:{port}",
                "socket": unix, "model": model, "version": str(version), "port": port}

    def alive(self, instance: dict) -> bool:
        try:
            os.kill(int(instance["id"]), 0)
        except (ProcessLookupError, ValueError):
            return False
        # a zombie still answers kill(0): look at its state
        stat = Path(f"/proc/{instance['id']}/stat")
        return stat.exists() and stat.read_text().split()[2] != "Z"

    def stop(self, instance: dict) -> None:
        pid = int(instance["id"])
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not self.alive(instance):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


@dataclass
class DockerBackend:
    """Containers on a Docker engine, driven through the Airflow Docker provider's DockerHook."""

    s: Settings
    name: str = "docker"

    @property
    def api(self):
        from airflow.providers.docker.hooks.docker import DockerHook

        if not hasattr(self, "_api"):
            base_url = self.s.docker_host or "unix:///var/run/docker.sock"
            self._api = DockerHook(docker_conn_id=None, base_url=base_url, timeout=600).api_client
        return self._api

    def build(self, model: str, version: str) -> str:
        """Build (or reuse: the tag is a content hash) the serving image through the Docker API and
        tag it for the model version, so `docker images` shows what each version ran on."""
        from include.serving.image import ImageBuildError, build_serving_image

        try:
            image = build_serving_image(self.api, self.s.serving_base_image)
        except ImageBuildError as err:
            raise DeployError(str(err)) from err
        repo = f"{SERVING_IMAGE}-{model}".lower()
        self.api.tag(image, repo, tag=f"v{version}")
        log.info("serving image %s tagged %s:v%s", image, repo, version)
        return f"{repo}:v{version}"

    def _mounts(self) -> list[str]:
        self.s.predictions_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.s.predictions_dir, 0o777)  # the container's non-root user appends the log
        return container_mounts(self.s)

    def _create(self, image: str, command: list[str], env: dict[str, str], name: str | None = None,
                restart: bool = False) -> str:
        mounts = self._mounts()
        host_config = self.api.create_host_config(
            network_mode=self.s.docker_network or "host", binds=[f"{p}:{p}:rw" for p in mounts],
            # a model server that crashes is restarted by the engine; the gateway's fallback covers the gap
            restart_policy={"Name": "unless-stopped"} if restart else None,
        )
        c = self.api.create_container(image=image, command=command, environment=env,
                                      host_config=host_config, name=name,
                                      labels={"mlops-loop": "serving"})
        return c["Id"]

    def start(self, image: str, model: str, version: str, dataset: str) -> dict:
        # On the host network every server needs its own port; on a named network (compose) each
        # container has its own address and is reached by name on the image's port.
        port = free_port() if not self.s.docker_network else 8080
        name = f"mlops-{model}-v{version}-{free_port()}".lower()
        host = "127.0.0.1" if not self.s.docker_network else "0.0.0.0"
        cid = self._create(
            image, ["python", "-m", "uvicorn", "include.serving.app:app", "--host", host,
                    "--port", str(port), "--log-level", "warning"],
            serving_env(model, version, dataset, self.s), name=name, restart=True,
        )
        self.api.start(cid)
        url = f"http://127.0.0.1:{port}" if not self.s.docker_network else f"http://{name}:{port}"
        return {"backend": self.name, "id": cid, "name": name, "url": url, "model": model, "version": str(version),
                "port": port}

    def alive(self, instance: dict) -> bool:
        try:
            return self.api.inspect_container(instance["id"])["State"]["Running"]
        except Exception:  # noqa: BLE001 - gone is not alive
            return False

    def stop(self, instance: dict) -> None:
        try:
            self.api.stop(instance["id"], timeout=10)
            self.api.remove_container(instance["id"], force=True)
        except Exception as err:  # noqa: BLE001 - already gone is fine
            log.info("stopping %s: %s", instance.get("name", instance["id"]), err)


def container_mounts(s: Settings) -> list[str]:
    """Host paths a serving or validation container must see at the same path: the state dir, the
    prediction log, the MLflow store and artifacts. Pure (no engine, no file system): the deploy
    DAG resolves the infra validation task's mounts from it at parse time."""
    paths = {s.state_dir, s.predictions_dir}
    for uri in (s.mlflow_tracking_uri, s.mlflow_artifact_root):
        if uri.startswith("sqlite:///"):
            paths.add(Path(uri[len("sqlite:///"):]).parent)
        elif uri.startswith("file://"):
            paths.add(Path(uri[len("file://"):]))
    return sorted({str(p) for p in paths})


def docker_available(s: Settings | None = None) -> bool:
    s = s or settings()
    try:
        import docker

        docker.DockerClient(base_url=s.docker_host or "unix:///var/run/docker.sock", timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means no engine
        return False


def docker_can_build(s: Settings | None = None) -> tuple[bool, str]:
    """(True, why) when an engine answers AND it has, or can pull, the serving base image.

    An engine alone is not enough: without the base image every build fails, and `auto` would
    retry a deploy that cannot succeed (seen with no registry reachable).
    """
    s = s or settings()
    if not docker_available(s):
        return False, "no Docker engine answers"
    import docker

    api = docker.DockerClient(base_url=s.docker_host or "unix:///var/run/docker.sock", timeout=120)
    try:
        api.images.get(s.serving_base_image)
        return True, f"the engine has the base image {s.serving_base_image}"
    except docker.errors.ImageNotFound:
        pass
    try:
        api.images.pull(s.serving_base_image)
        return True, f"pulled the base image {s.serving_base_image}"
    except docker.errors.DockerException as err:
        return False, (f"the base image {s.serving_base_image} is not on the engine and cannot be pulled "
                       f"({str(err)[:200]}); set MLOPS_SERVING_BASE_IMAGE or MLOPS_DEPLOY_BACKEND=docker")


def get_backend(name: str | None = None, s: Settings | None = None):
    s = s or settings()
    name = name or s.deploy_backend
    if name == "auto":
        ok, why = docker_can_build(s)
        name = "docker" if ok else "local"
        log.warning("MLOPS_DEPLOY_BACKEND=auto chose %s: %s", name, why)
    if name == "docker":
        return DockerBackend(s)
    if name == "local":
        return LocalBackend(s)
    raise ValueError(f"MLOPS_DEPLOY_BACKEND must be auto, docker or local; got {name!r}")


def backend_for(instance: dict, s: Settings | None = None):
    return get_backend(instance["backend"], s)
