"""Batch outcomes to a Prometheus Pushgateway: drift, gate, deploy, quarantine, DAG runs.

Tasks are batch jobs: Prometheus cannot scrape them, so (as Prometheus recommends for batch jobs)
each pushes its outcome to a Pushgateway that Prometheus scrapes (``honor_labels``). Only when
``MLOPS_PUSHGATEWAY_URL`` is set (compose sets it); otherwise every function here is a no-op.
A push never fails a task: an unreachable gateway, or anything unexpected in what is pushed, is
logged as a warning and the task goes on (the records in MLflow and the audit logs stay the
source of truth; these are views of them for alerts and dashboards).

``write_serving_targets`` keeps Prometheus' list of model servers (file service discovery) in step
with the edge's routes, when ``MLOPS_PROMETHEUS_TARGETS`` names the file.

Every push is a POST (``pushadd``) to the group ``{job, dataset, model}``: it replaces the metrics
of the same names in that group and keeps the others, so e.g. the last retrain's timestamp
survives the checks that did not retrain. Values are gauges of the LAST outcome, with the time it
happened (``*_timestamp_seconds``): ``changes()`` over them counts events, and a retry that
pushes the same record again changes nothing. deploy/alerts.yml and deploy/grafana/ read them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

ENV = "MLOPS_PUSHGATEWAY_URL"
# Prometheus' file_sd target file for the model servers (compose: deploy/prometheus.yml, job mlops-serving)
TARGETS_ENV = "MLOPS_PROMETHEUS_TARGETS"
TIMEOUT_S = 3.0  # a gateway that hangs costs a task at most this, once per push
DRIFT_CODES = ("insufficient_sample", "no_drift", "drift", "quality", "cooldown", "daily_cap")


def gateway_url() -> str | None:
    return os.environ.get(ENV, "").strip() or None


Sample = tuple[str, str, dict, float]  # name, help, labels, value


def push(job: str, grouping: dict[str, str], samples: Iterable[Sample]) -> bool:
    """POST ``samples`` (gauges) to the group; True if the gateway took them. Never raises."""
    url = gateway_url()
    if not url:
        return False
    try:
        from prometheus_client import CollectorRegistry, Gauge, pushadd_to_gateway

        registry = CollectorRegistry()
        gauges: dict[str, Gauge] = {}
        for name, help_text, labels, value in samples:
            if name not in gauges:
                gauges[name] = Gauge(name, help_text, sorted(labels), registry=registry)
            g = gauges[name]
            (g.labels(**{k: str(v) for k, v in labels.items()}) if labels else g).set(float(value))
        grouping = {k: str(v) for k, v in grouping.items() if v not in (None, "")}
        pushadd_to_gateway(url, job=job, registry=registry, grouping_key=grouping, timeout=TIMEOUT_S)
        return True
    except Exception as err:  # noqa: BLE001 - a metrics push must never fail the task
        log.warning("metrics push to %s (job %s, %s) failed; the task goes on: %s", url, job, grouping, err)
        return False


def _ts(iso: str | None) -> float:
    """Epoch seconds of an ISO time from a record (so a replayed record pushes the same value)."""
    if iso:
        from datetime import UTC, datetime

        try:
            t = datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
            return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
        except ValueError:
            pass
    return time.time()


def _version(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _dataset_of(model: str) -> str | None:
    try:
        from include.catalog import dataset_for_model

        return dataset_for_model(model)
    except Exception:  # noqa: BLE001 - a model no spec names is still pushed, without a dataset
        return None


def _safe(fn):
    """The record-point helpers build their samples from dicts: a surprise there must not fail a task."""
    def wrapper(*args, **kwargs) -> bool:
        if not gateway_url():
            return False
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - monitoring must never fail the task it watches
            log.warning("metrics push %s skipped; the task goes on: %s", fn.__name__, err)
            return False
    wrapper.__name__ = wrapper.__qualname__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# ------------------------------------------------------------------------------- record points


@_safe
def drift_outcome(summary: dict, features: Iterable[str] = ()) -> bool:
    """A drift check's summary (include.drift.run_drift_check); ``features``: every checked input."""
    if not summary or summary.get("skipped"):
        return False
    decision = summary.get("decision") or {}
    code = decision.get("code") or ""
    at = _ts(summary.get("at"))
    version = {"version": summary.get("model_version", "")}
    drifted = set(summary.get("drifted_features") or [])
    samples: list[Sample] = [
        ("mlops_drift_share", "Share of input features drifted in the last check", version,
         summary.get("share_drifted") or 0.0),
        ("mlops_drift_detected", "1 if the last check found drift (retrained or not)", {},
         1.0 if decision.get("drift_detected") else 0.0),
        ("mlops_drift_retrain", "1 if the last check triggered a retrain", {}, 1.0 if decision.get("retrain") else 0.0),
        ("mlops_drift_check_timestamp_seconds", "When the last drift check ran", {}, at),
        ("mlops_drift_rows_current", "Rows of served traffic in the last check's window", {},
         summary.get("n_current_total") or 0),
    ]
    samples += [("mlops_drift_decision", "The last check's decision code (1 = this code)", {"code": c},
                 1.0 if c == code else 0.0) for c in dict.fromkeys((*DRIFT_CODES, code)) if c]
    samples += [("mlops_drift_feature_drifted", "1 if the feature drifted in the last check", {"feature": f},
                 1.0 if f in drifted else 0.0) for f in dict.fromkeys((*features, *drifted))]
    if decision.get("retrain"):
        samples.append(("mlops_drift_retrain_timestamp_seconds", "When a drift check last triggered a retrain",
                        {}, at))
    if code in ("cooldown", "daily_cap"):
        samples.append(("mlops_drift_suppressed_timestamp_seconds",
                        "When the retrain policy last held back a retrain drift asked for (cooldown or daily cap)",
                        {"code": code}, at))
    return push("mlops_drift", {"dataset": summary.get("dataset"), "model": summary.get("model_name")}, samples)


@_safe
def gate_outcome(record: dict) -> bool:
    """A gate decision record (include.gate.evaluate_and_decide)."""
    decision = record.get("decision") or ""
    samples: list[Sample] = [
        ("mlops_gate_passed", "1 if the last gated version passed", {}, 1.0 if decision == "passed" else 0.0),
        ("mlops_gate_decision", "The last gate decision (1 = this decision)", {"decision": decision}, 1.0),
        ("mlops_gate_version", "The last gated model version", {}, _version(record.get("version"))),
        ("mlops_gate_decision_timestamp_seconds", "When the last gate decision was made", {},
         _ts(record.get("decided_at"))),
    ]
    return push("mlops_gate", {"dataset": record.get("dataset"), "model": record.get("model")}, samples)


@_safe
def deploy_outcome(model: str, version, outcome: str, dataset: str | None = None) -> bool:
    """``outcome``: ``deployed`` (champion moved) or ``rolled_back`` (include.deployment)."""
    now = time.time()
    if outcome == "deployed":
        samples: list[Sample] = [
            ("mlops_deploy_champion_version", "The version the last deploy made champion", {}, _version(version)),
            ("mlops_deploy_success_timestamp_seconds", "When a deploy last promoted a version", {}, now)]
    else:
        samples = [
            ("mlops_deploy_rollback_version", "The version the last rollback took out", {}, _version(version)),
            ("mlops_deploy_rollback_timestamp_seconds", "When a deploy was last rolled back", {}, now)]
    return push("mlops_deploy", {"dataset": dataset or _dataset_of(model), "model": model}, samples)


def deploy_event(event: dict) -> bool:
    """An audit line of include.deployment; ``deployed`` and ``rolled_back`` are outcomes, the rest not.
    A rollback names the version it took out (``from`` for a manual rollback to an older version)."""
    kind = (event or {}).get("event")
    if kind not in ("deployed", "rolled_back"):
        return False
    version = event.get("from") or event.get("version") if kind == "rolled_back" else event.get("version")
    return deploy_outcome(event.get("model"), version, kind, event.get("dataset"))


@_safe
def quarantine_outcome(dataset: str, kind: str, rows: int | None = None) -> bool:
    """A batch of ``dataset`` rejected by validation (``kind``: BatchRejected.kind) and quarantined."""
    samples: list[Sample] = [
        ("mlops_validation_quarantine_timestamp_seconds", "When a batch was last quarantined", {}, time.time()),
        ("mlops_validation_quarantine_kind", "Why the last batch was quarantined (1 = this kind)", {"kind": kind}, 1.0),
    ]
    if rows is not None:
        samples.append(("mlops_validation_quarantine_rows", "Rows of the last quarantined batch", {}, rows))
    model = None
    try:
        from include.spec import load_spec

        model = load_spec(dataset).model_name
    except Exception:  # noqa: BLE001 - an unknown dataset is still worth an alert
        pass
    return push("mlops_validation", {"dataset": dataset, "model": model}, samples)


@_safe
def dag_run_outcome(dag_id: str, state: str, at: float | None = None) -> bool:
    """A DAG run that ended (``success`` or ``failed``); pushed by plugins/mlops_metrics.py."""
    name = {"success": "mlops_dag_run_success_timestamp_seconds",
            "failed": "mlops_dag_run_failure_timestamp_seconds"}.get(state)
    if name is None:
        return False
    return push("mlops_dag_runs", {"dag_id": dag_id},
                [(name, f"When a run of the DAG last ended in {state}", {}, at or time.time())])


def write_serving_targets(state: dict) -> bool:
    """Prometheus' file_sd list of the model servers the edge routes to (active, fallback, canary),
    labelled model/version/role, from the edge's state (include.edge); written atomically, since
    Prometheus re-reads the file whenever it changes. No-op unless MLOPS_PROMETHEUS_TARGETS is set."""
    path = os.environ.get(TARGETS_ENV, "").strip()
    if not path:
        return False
    try:
        import json
        from pathlib import Path
        from urllib.parse import urlsplit

        groups = []
        for model, route in sorted((state.get("models") or {}).items()):
            route = route or {}
            for role, inst in (("active", route.get("active")), ("fallback", route.get("fallback")),
                               ("canary", (route.get("canary") or {}).get("upstream"))):
                if inst and inst.get("url"):
                    groups.append({"targets": [urlsplit(inst["url"]).netloc],
                                   "labels": {"model": model, "version": str(inst.get("version", "")), "role": role}})
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(groups, indent=2))
        tmp.replace(target)
        return True
    except Exception as err:  # noqa: BLE001 - monitoring must not fail a deploy
        log.warning("prometheus targets %s not written; the deploy goes on: %s", path, err)
        return False
