"""The edge's deployment state, ``<state>/deploy/edge.json``, and where the edge's files live.

Every read-modify-write of the state happens under ``locked`` (a file lock), so deploy tasks in
several processes never interleave; a corrupt file is set aside and rebuilt empty, never fatal.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from include.config import Settings, settings

log = logging.getLogger(__name__)


def state_file(s: Settings) -> Path:
    return s.state_dir / "deploy" / "edge.json"


def separate_edge() -> str:
    """The admin socket of an edge of its own (compose sets MLOPS_EDGE_ADMIN: the edge runs in
    another container), or "" for the embedded Caddy this process starts next to the servers."""
    return os.environ.get("MLOPS_EDGE_ADMIN", "").strip()


def admin_socket(s: Settings) -> Path:
    return Path(separate_edge() or s.state_dir / "deploy" / "caddy-admin.sock")


def read_state(s: Settings) -> dict:
    """{"models": {model: {"active": upstream|None, "fallback": upstream|None}}, "events": [...]}."""
    path = state_file(s)
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise ValueError(f"expected an object with 'models', got {type(data).__name__}")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        log.warning("edge: state file %s is unreadable (%s); starting with no routes (kept as .corrupt)",
                    path, err)
        path.replace(path.with_suffix(".corrupt"))
        data = {}
    return {"models": data.get("models") or {}, "events": data.get("events") or []}


def write_state(s: Settings, state: dict) -> None:
    path = state_file(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"models": state["models"], "events": state["events"][-200:]}, indent=2))
    tmp.replace(path)
    from include.metrics_push import write_serving_targets

    write_serving_targets(state)  # Prometheus scrapes the model servers the edge routes to


@contextmanager
def locked(s: Settings) -> Iterator[None]:
    from filelock import FileLock

    path = s.state_dir / "locks" / "edge.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=s.lock_timeout_s):
        yield


def status(s: Settings | None = None) -> dict:
    s = s or settings()
    with locked(s):
        state = read_state(s)
    return {"models": state["models"], "events": state["events"][-20:]}

