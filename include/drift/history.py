"""The trigger log: every decision (retrain or suppressed) appended once per run key to triggers.jsonl."""

from __future__ import annotations

import logging
from pathlib import Path

from include.drift.decision import Decision
from include.recordlog import RecordLog, drift_trigger_log

log = logging.getLogger(__name__)


def load_trigger_history(*, model_name: str | None = None, path: Path | None = None) -> list[dict]:
    """Every recorded decision (oldest first), optionally of one model; a torn last line is skipped."""
    return [e for e in drift_trigger_log(path).read() if model_name is None or e.get("model_name") == model_name]


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
    and nothing is appended.
    """
    return append_entry(drift_trigger_log(path), decision, model_name=model_name, model_version=model_version,
                        dataset=dataset, run_key=run_key, summary=summary)


def append_entry(tlog: RecordLog, decision: Decision, *, model_name: str, model_version: str | int, dataset: str,
                 run_key: str | None, summary: dict | None) -> dict:
    entry = {
        "at": decision.at, "dataset": dataset, "model_name": model_name, "model_version": str(model_version),
        "run_key": run_key, "retrain": decision.retrain, "code": decision.code, "reason": decision.reason,
        "drift_detected": decision.drift_detected, "drifted_features": list(decision.drifted_features),
        "summary": summary,
    }
    return tlog.append(entry)[0]
