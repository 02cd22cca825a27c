"""Stage 3: deploy a model version behind the serving edge (Caddy), blue/green, with rollback.

Steps (one DAG task each, so the UI shows where a deploy stopped):

1. ``build``          the serving image for the version (Docker) or nothing (local processes);
2. ``infra_validate`` a one-shot container (the Docker provider's ``DockerOperator``, see
                      include/infra_validation_operator.py) or, with the local backend, the
                      server's own process loads the version from the registry and scores the
                      golden holdout rows; the scores must equal the offline scores training
                      logged for the same rows (:func:`prepare_infra_validation`);
3. ``switch``         start the new server next to the old one, wait until it is ready, flip the
                      model's route on the edge to it (zero failed requests, see include/edge.py),
                      then watch its health for a while;
4. ``promote``        only then move the alias ``champion``, tag the version, append to the audit
                      log; the old champion stays warm as the edge's fallback;
5. ``rollback``       on any failure in 2-4: the edge points back at the previous server,
                      the new one is stopped, the alias is untouched; the old champion keeps serving.

Backends: ``docker`` (a Docker engine, via ``DOCKER_HOST`` or the local socket) and ``local``
(uvicorn processes on this machine, for ``make demo`` without Docker). ``MLOPS_DEPLOY_BACKEND``
= ``auto`` picks docker when an engine answers and has (or can pull) the serving base image.
"""

from __future__ import annotations

import json
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

log = logging.getLogger(__name__)

SERVING_IMAGE = "mlops-serving"


class DeployError(RuntimeError):
    """A deployment step failed; the message says which and why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, *, body: dict | None = None, token: str | None = None, timeout: float = 5.0):
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


def serving_env(model: str, version: str, dataset: str, s: Settings) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": s.mlflow_tracking_uri,
        "MLFLOW_REGISTRY_URI": s.mlflow_registry_uri,
        "MLOPS_MODEL_NAME": model,
        "MLOPS_MODEL_VERSION": str(version),
        "MLOPS_DATASET": dataset,
        "MLOPS_PREDICTIONS_DIR": str(s.predictions_dir),
        "MLOPS_STATE_DIR": str(s.state_dir),
        "MLOPS_ADMIN_TOKEN": admin_token(s),
        # serving knobs (batching, prediction-log flushing, limits) and S3 access follow the deployer's env
        **{k: v for k, v in os.environ.items()
           if k.startswith(("MLOPS_SERVING_", "MLOPS_PREDLOG_", "AWS_", "MLFLOW_S3_")) and k != "MLOPS_SERVING_PORT"},
    }


# --------------------------------------------------------------------------------------- backends


@dataclass
class LocalBackend:
    """uvicorn processes on this machine: the embedded default when no Docker engine answers."""

    s: Settings
    name: str = "local"

    def build(self, model: str, version: str) -> str | None:
        return None  # the code is already installed in this venv

    def start(self, image, model: str, version: str, dataset: str) -> dict:
        port = _free_port()
        logs = self.s.state_dir / "deploy" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{model}-v{version}-{port}.log", "ab")  # noqa: SIM115 - owned by the child
        # under a supervisor: a server that dies is restarted on the same port (Docker's restart
        # policy, for the embedded mode); stopping the process group stops both
        proc = subprocess.Popen(
            [sys.executable, "-m", "include.serving.supervise", "--",
             sys.executable, "-m", "uvicorn", "include.serving.app:app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "warning"],
            env={**os.environ, **serving_env(model, version, dataset, self.s)},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT,
        )
        return {"backend": self.name, "id": str(proc.pid), "url": f"http://127.0.0.1:{port}",
                "model": model, "version": str(version), "port": port}

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
        port = _free_port() if not self.s.docker_network else 8080
        name = f"mlops-{model}-v{version}-{_free_port()}".lower()
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


def validation_env(s: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """(public, private) environment of an infra validation run. Private holds everything that
    may carry a credential (store URIs can embed a password, S3 keys, MLflow tokens): the Docker
    task passes it as ``private_environment``, which Airflow neither renders nor shows."""
    from include.infra_validation import CREDENTIAL_PREFIXES

    public = {"MLOPS_STATE_DIR": str(s.state_dir), "MLOPS_MLFLOW_ARTIFACT_ROOT": s.mlflow_artifact_root,
              "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    private = {"MLFLOW_TRACKING_URI": s.mlflow_tracking_uri, "MLFLOW_REGISTRY_URI": s.mlflow_registry_uri,
               **{k: v for k, v in os.environ.items() if k.startswith(CREDENTIAL_PREFIXES) and k != "MLFLOW_TRACKING_URI"}}
    return public, private


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


# ------------------------------------------------------------------------------- serving edge
# The edge is Caddy (include/edge.py); these names are the deploy steps' view of it.


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


# ------------------------------------------------------------------------------------------ steps


def golden_sample(model: str, version: str, s: Settings | None = None) -> Path:
    """The first GOLDEN_ROWS rows of the version's own holdout, saved where a container can read it."""
    import mlflow
    import pandas as pd

    from include.infra_validation import GOLDEN_ROWS
    from include.tracking import client, configure_mlflow
    from include.training.model_io import HOLDOUT_ARTIFACT

    s = s or settings()
    configure_mlflow()
    mv = client().get_model_version(model, str(version))
    # keyed by the version's run too: a registry rebuilt from scratch reuses version numbers
    out = s.state_dir / "deploy" / "golden" / f"{model}-v{version}-{mv.run_id}.parquet"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=HOLDOUT_ARTIFACT)
        pd.read_parquet(local).head(GOLDEN_ROWS).to_parquet(out, index=False)
        os.chmod(out, 0o644)
    return out


def expected_scores(model: str, version: str, dataset: str, golden: Path, s: Settings | None = None) -> Path:
    """The offline scores of the golden rows, as training logged them (``holdout/golden_scores.json``).

    Versions trained before training logged them are scored here, in the worker, with the
    registered artifact: for those a broken artifact fails in this step instead of in the image.
    """
    import tempfile

    from include.infra_validation import EXPECTED_ARTIFACT, score_golden
    from include.tracking import client, configure_mlflow, download_artifact

    s = s or settings()
    out = golden.with_suffix(".expected.json")
    if out.exists():
        return out
    configure_mlflow()
    run_id = client().get_model_version(model, str(version)).run_id
    source = f"runs:/{run_id}/{EXPECTED_ARTIFACT}"
    with tempfile.TemporaryDirectory(prefix="infra-expected-") as tmp:
        # absent: None (an old version); an unreachable store raises, and the task retries
        local, _ = download_artifact(source, tmp)
        scores = json.loads(Path(local).read_text())["scores"] if local else None
    if scores is None:
        log.warning("%s v%s has no %s (trained before it was logged): scoring the golden rows in this worker",
                    model, version, EXPECTED_ARTIFACT)
        scores, source = score_golden(model, str(version), str(golden), dataset), "scored by the deploy worker"
    partial = out.with_suffix(".tmp")
    partial.write_text(json.dumps({"scores": scores, "source": source}))
    os.chmod(partial, 0o644)
    partial.replace(out)
    return out


def prepare_infra_validation(model: str, version: str, dataset: str, image: str | None, backend: str,
                             dag_run_id: str, s: Settings | None = None) -> dict:
    """Inputs of one infra validation run, as paths (XCom carries these, never the rows or scores):
    the golden rows, the offline scores, where the verdict goes, the backend (which check runs),
    the image and a container name.

    The results directory is world-writable: the serving image runs as a non-root uid.
    """
    import hashlib
    import re

    s = s or settings()
    golden = golden_sample(model, version, s)
    expected = expected_scores(model, version, dataset, golden, s)
    results_dir = s.state_dir / "deploy" / "validation"
    results_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(results_dir, 0o777)
    run_key = hashlib.sha256(dag_run_id.encode()).hexdigest()[:10]  # one verdict file per deploy run
    results = results_dir / f"{model}-v{version}-{run_key}.json"
    argv = ["-m", "include.infra_validation", "--model", model, "--version", str(version), "--dataset", dataset,
            "--golden", str(golden), "--expected", str(expected), "--results", str(results)]
    return {"model": model, "version": str(version), "dataset": dataset, "backend": backend, "image": image,
            "argv": argv,
            "golden": str(golden), "expected": str(expected), "results": str(results),
            "container": re.sub(r"[^a-zA-Z0-9_.-]", "-", f"mlops-infra-{model}-v{version}-{run_key}").lower()}


def validation_failure(request: dict, code: int | None, output: str, where: str) -> str:
    """Why a validation run failed: its verdict's error (the results file, else the last JSON line
    it printed), else the tail of its output."""
    verdict: dict = {}
    try:
        verdict = json.loads(Path(request["results"]).read_text())
    except (OSError, ValueError):
        lines = [ln for ln in output.splitlines() if ln.strip().startswith("{")]
        try:
            verdict = json.loads(lines[-1]) if lines else {}
        except ValueError:
            pass
    cause = verdict.get("error") or output[-1500:].strip() or "no output"
    return f"infra validation of {request['model']} v{request['version']} failed in {where} (exit {code}): {cause}"


def infra_validate_local(request: dict, s: Settings | None = None) -> dict:
    """The local backend's infra validation: the check runs as its own process from the installed
    package (as the local server would load the model), so a broken artifact fails *there*."""
    s = s or settings()
    public, private = validation_env(s)
    Path(request["results"]).unlink(missing_ok=True)  # a verdict of an earlier try must not be read
    proc = subprocess.run([sys.executable, *request["argv"]], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **public, **private, "MLOPS_INFRA_VALIDATION_IN": "process"},
                          cwd=PROJECT_ROOT)
    print(proc.stdout + proc.stderr)  # the task log shows what the process said
    if proc.returncode != 0:
        raise DeployError(validation_failure(request, proc.returncode, proc.stdout + proc.stderr,
                                             "the server's own process"))
    verdict = json.loads(Path(request["results"]).read_text())
    return {k: v for k, v in verdict.items() if k != "scores"}


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
        r = _http("GET", instance["url"] + "/ready")
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


def audit(event: dict, s: Settings | None = None) -> None:
    s = s or settings()
    path = s.reports_dir / "deployments.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event}) + "\n")
    from include.metrics_push import deploy_event

    deploy_event(event)  # deployed / rolled_back, for the alerts and the dashboard


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


def read_audit(s: Settings, model: str | None = None) -> list[dict]:
    from include.jsonsafe import read_jsonl

    return [r for r in read_jsonl(s.reports_dir / "deployments.jsonl") if model is None or r.get("model") == model]


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
        return _http("GET", active["url"] + "/ready", timeout=2.0).status_code == 200
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


if __name__ == "__main__":
    if sys.argv[1:] != ["stop"]:
        raise SystemExit("usage: python -m include.deployment stop")
    print("stopped:", ", ".join(stop_all()) or "nothing was serving")
