"""What the MLOps page shows, read from where the loop recorded it; nothing is computed anew.

* MLflow registry: aliases (champion, challenger), versions, their lineage tags, run metrics, model cards;
* ``<reports_dir>/audit.jsonl`` (gate decisions), ``deployments.jsonl`` (deploys, rollbacks),
  ``drift/triggers.jsonl`` (drift checks and the retrains they triggered, with the report paths),
  ``validations/*.json`` (ingest validations), ``<quarantine_dir>/*/report.json`` (rejected batches);
* the serving edge's state (:func:`include.edge.status`) and :mod:`include.lineage`.

Every call to a store that can be slow or down (MLflow, the edge lock, the lineage lookup) runs
with a timeout (``MLOPS_UI_STORE_TIMEOUT_S``, default 10 s) in a small thread pool: a late answer
becomes ``{"available": False, "error": ...}``, never a hung page. Cheap to import (stdlib only).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from include.recordlog import deploy_audit_log, drift_trigger_log, gate_audit_log

log = logging.getLogger(__name__)

_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="mlops-ui")
TIMELINE_LIMIT = 500


class Unavailable(RuntimeError):
    """A store did not answer in time or failed: the page says so instead of waiting."""


def store_timeout() -> float:
    from include.config import env_number

    return env_number("MLOPS_UI_STORE_TIMEOUT_S", 10.0, float)


def call(what: str, fn, *args, **kwargs):
    """fn(*args) within the store timeout; Unavailable(what: why) when it is late or fails."""
    future = _POOL.submit(fn, *args, **kwargs)
    try:
        return future.result(timeout=store_timeout())
    except LookupError:  # not found (an unknown version, request id, ...): the caller says 404
        raise
    except FutureTimeout as err:
        raise Unavailable(f"{what}: no answer within {store_timeout():g} s") from err
    except Exception as err:  # any store failure is shown as "unavailable"
        raise Unavailable(f"{what}: {type(err).__name__}: {err}"[:500]) from err


def unavailable(err: Unavailable) -> dict:
    return {"available": False, "error": str(err)}


def _settings():
    from include.config import settings

    return settings()


def datasets() -> dict[str, str]:
    """{dataset: its registered model}, from the specs."""
    from include.catalog import model_names

    return {d: m for m, d in model_names().items()}


# ------------------------------------------------------------------------------------ MLflow


def _import_mlflow() -> None:
    """Import MLflow before a store call is timed: a cold import takes seconds on a busy machine
    (local work, bounded), and must not be mistaken for a store that does not answer."""
    import mlflow  # noqa: F401

    import include.tracking  # noqa: F401


def _mlflow_client():
    from include.tracking import client, configure_mlflow

    configure_mlflow()
    return client()


def _aliases(model: str) -> dict:
    from mlflow.exceptions import MlflowException

    from include.tracking import is_not_found

    try:
        rm = _mlflow_client().get_registered_model(model)
    except MlflowException as err:
        if is_not_found(err):
            return {}
        raise
    return {k: str(v) for k, v in (rm.aliases or {}).items()}


def mlflow_ui_url() -> str | None:
    """Where a user opens MLflow: MLOPS_MLFLOW_UI_URL, else an http tracking URI, else None."""
    explicit = os.environ.get("MLOPS_MLFLOW_UI_URL", "").strip()
    if explicit:
        return explicit.rstrip("/")
    uri = _settings().mlflow_tracking_uri
    return uri.rstrip("/") if uri.startswith("http") else None


def _versions(model: str, limit: int) -> list[dict]:
    c = _mlflow_client()
    by_version: dict[str, list[str]] = {}  # a search does not fill in a version's aliases: the model has them
    for alias, v in _aliases(model).items():
        by_version.setdefault(str(v), []).append(alias)
    mvs = sorted(c.search_model_versions(f"name='{model}'"), key=lambda v: int(v.version), reverse=True)[:limit]
    out = []
    for mv in mvs:
        run = c.get_run(mv.run_id)
        metrics = run.data.metrics
        out.append({
            "version": str(mv.version), "run_id": mv.run_id, "created": mv.creation_timestamp,
            "aliases": sorted(by_version.get(str(mv.version), [])), "tags": dict(mv.tags or {}),
            "metrics": {k[5:]: v for k, v in sorted(metrics.items()) if k.startswith("test_") and "__" not in k},
            "slice_metrics": {k[5:]: v for k, v in sorted(metrics.items()) if k.startswith("test_") and "__" in k},
        })
    return out


def versions(model: str, limit: int = 20) -> dict:
    """The model's newest versions with metrics, lineage tags and their gate decision records."""
    if model not in {m for m in datasets().values()}:
        raise KeyError(model)
    decisions: dict[str, dict] = {}
    for rec in gate_audit_log(s=_settings()).read():
        if rec.get("model") == model:
            decisions[str(rec.get("version"))] = rec  # the newest decision of a version wins
    base = {"model": model, "mlflow_ui": mlflow_ui_url()}
    _import_mlflow()
    try:
        found = call(f"MLflow ({_settings().mlflow_tracking_uri})", _versions, model, limit)
    except Unavailable as err:
        # the audit log still says what the gate decided, without MLflow
        return {**base, "registry": unavailable(err),
                "versions": [{"version": v, "gate": _gate_view(r)} for v, r in
                             sorted(decisions.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0,
                                    reverse=True)]}
    for v in found:
        v["gate"] = _gate_view(decisions.get(v["version"]))
        tags = v["tags"]
        v["lineage"] = {k: tags.get(k) for k in ("dataset", "data_rev", "data_md5", "validation_id", "code_sha",
                                                "dag_run_id", "reason", "family", "trigger_user")}
        v["trigger"] = {k[len("trigger_"):]: t for k, t in tags.items() if k.startswith("trigger_")}
        v["model_card"] = tags.get("model_card")
    return {**base, "registry": {"available": True}, "versions": found}


def _gate_view(rec: dict | None) -> dict | None:
    if not rec:
        return None
    bootstrap = next((c for c in rec.get("checks") or [] if "bootstrap" in str(c.get("name"))), None)
    return {"decision": rec.get("decision"), "reasons": rec.get("reasons") or [], "decided_at": rec.get("decided_at"),
            "champion_version": (rec.get("champion") or {}).get("version"), "override": rec.get("override"),
            "trigger": rec.get("trigger") or {}, "bootstrap": bootstrap, "record_uri": rec.get("record_uri"),
            "checks": rec.get("checks") or []}


def _card_html(model: str, version: str) -> str:
    import mlflow

    from include.model_card import CARD_HTML

    mv = _mlflow_client().get_model_version(model, version)
    return Path(mlflow.artifacts.download_artifacts(f"runs:/{mv.run_id}/{CARD_HTML}")).read_text()


def model_card_html(model: str, version: str) -> str:
    _import_mlflow()
    return call(f"model card of {model} v{version} from MLflow", _card_html, model, str(version))


# ------------------------------------------------------------------------------------ overview


def _edge_status() -> dict:
    from include.edge import status

    return status(_settings())


def _newest_validation(dataset: str) -> dict | None:
    d = _settings().reports_dir / "validations"
    if not d.is_dir():
        return None
    for p in sorted(d.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            v = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if v.get("dataset") == dataset:
            return {k: v.get(k) for k in ("validation_id", "batch", "success", "rows", "created_at", "failures")}
    return None


def overview() -> dict:
    """Per dataset: its model's champion/challenger, what the edge serves, last ingest, last drift check."""
    names = datasets()
    _import_mlflow()
    try:
        edge = {"available": True, **call("serving edge state", _edge_status)}
    except Unavailable as err:
        edge = unavailable(err)
    drift = drift_trigger_log(s=_settings()).read()
    rows = []
    for dataset, model in sorted(names.items()):
        try:
            aliases = {"available": True, **call(f"MLflow ({_settings().mlflow_tracking_uri})", _aliases, model)}
        except Unavailable as err:
            aliases = unavailable(err)
        route = (edge.get("models") or {}).get(model) or {}
        last = next((e for e in reversed(drift) if e.get("dataset") == dataset), None)
        rows.append({
            "dataset": dataset, "model": model,
            "registry": aliases,
            "champion": aliases.get("champion"), "challenger": aliases.get("challenger"),
            "serving": ({"available": False, "error": edge["error"]} if not edge.get("available") else
                        {"active": route.get("active"), "fallback": route.get("fallback"),
                         **{k: v for k, v in route.items() if k not in ("active", "fallback")}}),
            "last_ingest": _newest_validation(dataset),
            "last_drift_check": None if last is None else {
                "at": last.get("at"), "retrain": last.get("retrain"), "code": last.get("code"),
                "reason": last.get("reason"), "drifted_features": last.get("drifted_features"),
                "share_drifted": (last.get("summary") or {}).get("share_drifted"),
                "model_version": last.get("model_version")},
        })
    return {"datasets": rows, "edge_events": (edge.get("events") or [])[-5:] if edge.get("available") else []}


# ------------------------------------------------------------------------------------ timeline


def _quarantines() -> list[dict]:
    out = []
    qdir = _settings().quarantine_dir
    for report in sorted(qdir.glob("*/report.json")) if qdir.is_dir() else []:
        try:
            r = json.loads(report.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        src = Path(str(r.get("source_path") or ""))
        # a landed batch sits in <landing>/<dataset>/ (staged S3 batches: in a dir named after it too)
        out.append({"at": r.get("time") or _mtime_iso(report), "kind": "quarantine",
                    "dataset": src.parent.name if src.parent.name in datasets() else None,
                    "summary": f"batch {r.get('batch')} quarantined ({r.get('kind')}): {r.get('message', '')}"[:400],
                    "detail": {"folder": str(report.parent), "report": str(report.parent / "report.md"),
                               "validation_id": r.get("validation_id")}})
    return out


def _mtime_iso(p: Path) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(p.stat().st_mtime, UTC).isoformat(timespec="seconds")


def _norm_time(t) -> str:
    """ISO strings sort as text once they share one form: 'YYYY-MM-DDTHH:MM:SS'."""
    s = str(t or "")
    return s.replace(" ", "T")[:19]


def timeline(dataset: str | None = None, limit: int = TIMELINE_LIMIT) -> dict:
    """Ingests, quarantines, trainings, gate decisions, deploys, rollbacks, drift checks and the
    retrains they triggered, newest first; only ``dataset``'s when given."""
    s = _settings()
    model_ds = {m: d for d, m in datasets().items()}
    events: list[dict] = []
    vdir = s.reports_dir / "validations"
    for p in vdir.glob("*.json") if vdir.is_dir() else []:
        try:
            v = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        events.append({"at": v.get("created_at") or _mtime_iso(p), "kind": "ingest" if v.get("success") else
                       "validation_failed", "dataset": v.get("dataset"),
                       "summary": f"batch {v.get('batch')}: {v.get('rows')} rows, validation "
                                  f"{'passed' if v.get('success') else 'FAILED'} ({v.get('validation_id')})",
                       "detail": {"validation_id": v.get("validation_id")}})
    events += _quarantines()
    for rec in gate_audit_log(s=s).read():
        ch = rec.get("challenger") or {}
        by = (rec.get("override") or {}).get("by") or (rec.get("trigger") or {}).get("user")
        events.append({"at": rec.get("decided_at"), "kind": "trained", "dataset": rec.get("dataset"),
                       "summary": f"{rec.get('model')} v{rec.get('version')} trained on data rev "
                                  f"{str(ch.get('data_rev'))[:10]} (run {ch.get('run_name') or ch.get('run_id')}, "
                                  f"reason: {(rec.get('trigger') or {}).get('reason')})",
                       "detail": {"version": rec.get("version"), "dag_run_id": ch.get("dag_run_id")}})
        events.append({"at": rec.get("decided_at"), "kind": "gate", "dataset": rec.get("dataset"),
                       "summary": f"gate {rec.get('decision')}: {rec.get('model')} v{rec.get('version')} vs champion "
                                  f"{(rec.get('champion') or {}).get('version') or 'none'}"
                                  + (f" (override by {by})" if rec.get("override") else "")
                                  + (f"; {'; '.join(rec.get('reasons') or [])}"[:400]),
                       "detail": {"version": rec.get("version"), "decision": rec.get("decision"), "by": by}})
    for rec in deploy_audit_log(s=s).read():
        trig = rec.get("trigger") or {}
        kind = {"deployed": "deploy", "rolled_back": "rollback"}.get(rec.get("event"), rec.get("event") or "deploy")
        if kind == "rollback" and rec.get("from"):  # a rollback_to deploy: `version` is where it went back to
            what = (f"{rec.get('model')} rolled back from v{rec['from']} to v{rec.get('version')}: "
                    f"{rec.get('reason')}")
        else:
            what = (f"{rec.get('model')} v{rec.get('version')} " +
                    ({"deploy": f"deployed (was {'v' + str(rec['previous_champion']) if rec.get('previous_champion') else 'no champion'})",
                      "rollback": f"rolled back: {rec.get('reason')}; serving "
                                  f"{'v' + str(rec['serving']) if rec.get('serving') else 'nothing'}"}
                     .get(kind, json.dumps({k: v for k, v in rec.items() if k not in ('time', 'model', 'version')})[:300])))
        # the deploy DAG records who triggered it (dag_run.triggering_user_name) as trigger.user; a
        # rollback may name its author as "by" instead
        user = trig.get("user") or rec.get("by")
        if user and not what.endswith(f" by {user}"):  # a rollback_to's reason names the user already
            what += f" by {user}"
        events.append({"at": rec.get("time"), "kind": kind, "dataset": rec.get("dataset") or model_ds.get(rec.get("model")),
                       "summary": what, "detail": {"version": rec.get("version"), "trigger": trig, "by": user}})
    for e in drift_trigger_log(s=s).read():
        summ = e.get("summary") or {}
        events.append({"at": e.get("at"), "kind": "drift_check", "dataset": e.get("dataset"),
                       "summary": f"drift check of {e.get('model_name')} v{e.get('model_version')}: {e.get('code')} "
                                  f"(share drifted {summ.get('share_drifted')}); {e.get('reason')}"[:400],
                       "detail": {"report_path": summ.get("report_path"), "run_key": e.get("run_key")}})
        if e.get("retrain"):
            events.append({"at": e.get("at"), "kind": "retrain_triggered", "dataset": e.get("dataset"),
                           "summary": f"retrain of {e.get('dataset')} triggered ({e.get('code')}): drifted "
                                      f"{', '.join(e.get('drifted_features') or []) or '-'}",
                           "detail": {"run_key": e.get("run_key")}})
    if dataset:
        events = [e for e in events if e.get("dataset") == dataset]
    events.sort(key=lambda e: _norm_time(e.get("at")), reverse=True)
    return {"dataset": dataset, "events": events[:limit], "total": len(events)}


# ------------------------------------------------------------------------------------ drift


def drift_dir() -> Path:
    return _settings().reports_dir / "drift"


def drift_history(dataset: str | None = None) -> dict:
    """Every recorded drift check (newest first) with the path of its Evidently report."""
    root = drift_dir().resolve()
    out = []
    for e in reversed(drift_trigger_log(s=_settings()).read()):
        if dataset and e.get("dataset") != dataset:
            continue
        summ = e.get("summary") or {}
        report = summ.get("report_path")
        rel = None
        if report:
            try:
                rel = str(Path(report).resolve().relative_to(root))
            except ValueError:
                rel = None
        out.append({"at": e.get("at"), "dataset": e.get("dataset"), "model": e.get("model_name"),
                    "model_version": e.get("model_version"), "retrain": e.get("retrain"), "code": e.get("code"),
                    "reason": e.get("reason"), "drifted_features": e.get("drifted_features") or [],
                    "share_drifted": summ.get("share_drifted"), "n_current": summ.get("n_current"),
                    "report": rel, "report_uri": summ.get("report_uri"), "mlflow_run_id": summ.get("mlflow_run_id")})
    return {"dataset": dataset, "checks": out}


def drift_report_file(rel: str) -> Path:
    """The Evidently HTML report at ``rel`` under the drift reports dir (nothing outside it)."""
    root = drift_dir().resolve()
    p = (root / rel).resolve()
    if not p.is_relative_to(root) or p.suffix != ".html" or not p.is_file():
        raise FileNotFoundError(rel)
    return p


# ------------------------------------------------------------------------------------ lineage


def lineage(request_id: str | None = None, batch_run: str | None = None) -> dict:
    """The full lineage record of a served prediction or a batch scoring run (include/lineage.py)."""
    import pyarrow.dataset  # noqa: F401 - cold imports before the timed lookup (see _import_mlflow)

    from include import lineage as lin

    _import_mlflow()
    if request_id:
        return call("lineage lookup", lin.trace_prediction, request_id)
    return call("lineage lookup", lin.trace_batch, batch_run)
