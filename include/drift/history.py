"""The trigger log: every decision (retrain or suppressed) appended once per run key to triggers.jsonl."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from include.config import settings
from include.drift.decision import Decision
from include.jsonsafe import json_safe

log = logging.getLogger(__name__)


def triggers_path() -> Path:
    return settings().reports_dir / "drift" / "triggers.jsonl"


def load_trigger_history(*, model_name: str | None = None, path: Path | None = None) -> list[dict]:
    """Every recorded decision (oldest first), optionally of one model; a torn last line is skipped."""
    from include.jsonsafe import read_jsonl

    return [e for e in read_jsonl(path or triggers_path()) if model_name is None or e.get("model_name") == model_name]


def record_trigger(
    decision: Decision,
    *,
    model_name: str,
    model_version: str | int,
    dataset: str,
    run_key: str | None = None,
    summary: dict | None = None,
    path: Path | None = None,
) -> dict:
    """Append the decision (retrain or skipped, with its reason) to the JSONL log; once per run_key.

    A retried task with the same ``run_key`` gets the entry written by the first attempt back
    and nothing is appended. Appends are serialised with a file lock (several checks may run).
    """
    path = Path(path or triggers_path())
    with _trigger_lock(path):
        return _append_entry(path, decision, model_name=model_name, model_version=model_version,
                             dataset=dataset, run_key=run_key, summary=summary)


def _trigger_lock(path: Path):
    """The lock that serialises decide + record on one trigger log (read-decide-append is atomic)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=600)


def _append_entry(path: Path, decision: Decision, *, model_name: str, model_version: str | int, dataset: str,
                  run_key: str | None, summary: dict | None) -> dict:
    if run_key:
        for old in load_trigger_history(path=path):
            if old.get("run_key") == run_key and old.get("model_name") == model_name:
                return old
    entry = json_safe({
        "at": decision.at, "dataset": dataset, "model_name": model_name, "model_version": str(model_version),
        "run_key": run_key, "retrain": decision.retrain, "code": decision.code, "reason": decision.reason,
        "drift_detected": decision.drift_detected, "drifted_features": list(decision.drifted_features),
        "summary": summary,
    })
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
    return entry
