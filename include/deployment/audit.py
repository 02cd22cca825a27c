"""The deploy audit log (``<reports_dir>/deployments.jsonl``, an :class:`include.recordlog.RecordLog`):
one JSON line per deploy or rollback, also pushed as a metric for the alerts and the dashboard."""

from __future__ import annotations

import time

from include.config import Settings, settings
from include.recordlog import deploy_audit_log


def audit(event: dict, s: Settings | None = None) -> None:
    s = s or settings()
    deploy_audit_log(s=s).append(
        {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event})
    from include.metrics_push import deploy_event

    deploy_event(event)  # deployed / rolled_back, for the alerts and the dashboard


def read_audit(s: Settings, model: str | None = None) -> list[dict]:
    log = deploy_audit_log(s=s)
    return [r for r in log.read() if model is None or r.get("model") == model]
