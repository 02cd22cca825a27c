"""The deploy audit log (``<reports_dir>/deployments.jsonl``): one JSON line per deploy or rollback,
also pushed as a metric for the alerts and the dashboard."""

from __future__ import annotations

import json
import time

from include.config import Settings, settings


def audit(event: dict, s: Settings | None = None) -> None:
    s = s or settings()
    path = s.reports_dir / "deployments.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **event}) + "\n")
    from include.metrics_push import deploy_event

    deploy_event(event)  # deployed / rolled_back, for the alerts and the dashboard


def read_audit(s: Settings, model: str | None = None) -> list[dict]:
    from include.jsonsafe import read_jsonl

    return [r for r in read_jsonl(s.reports_dir / "deployments.jsonl") if model is None or r.get("model") == model]
