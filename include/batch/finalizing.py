"""Finalize a batch run: every partition committed -> manifest, one MLflow run, leftovers removed."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from include.batch import sources
from include.batch.layout import EXPERIMENT, MANIFEST, PLAN, committed_stats, fingerprint, label, part_paths
from include.crashpoints import crash_point

log = logging.getLogger(__name__)


def finalize(parts: list[dict]) -> dict:
    """Check every partition is committed, write the manifest and its MLflow run (once)."""
    first = parts[0]
    fs, base = sources.filesystem(first["output"])
    done = sources.read_text(fs, sources.join(base, MANIFEST))
    if done:
        log.info("batch run %s is already finalized", first["batch_run_id"])
        return json.loads(done)
    plan_ = json.loads(sources.read_text(fs, sources.join(base, PLAN)))
    stats = []
    for part in parts:
        st = committed_stats(fs, part_paths(base, part["index"])[0])
        if not st or st.get("fingerprint") != fingerprint(part):
            raise RuntimeError(f"partition {label(part)} is not committed in {first['output']}: rerun its task")
        stats.append(st)
    _remove_leftovers(fs, base, len(parts))
    manifest = _aggregate(plan_, stats)
    manifest["mlflow_run_id"] = _log_run(plan_, manifest)
    crash_point("batch.before_manifest")
    sources.write_text_atomic(fs, sources.join(base, MANIFEST), json.dumps(manifest, indent=2))
    log.info("batch run %s: %d rows in, %d scored, %d rejected -> %s (MLflow run %s)", plan_["batch_run_id"],
             manifest["rows_in"], manifest["scored"], manifest["rejected"], first["output"], manifest["mlflow_run_id"])
    return manifest


def _remove_leftovers(fs, base: str, count: int) -> None:
    """Temp files of killed attempts, and parts beyond the plan, go: the output is the plan's parts only."""
    import pyarrow.fs as pafs

    keep = {f"part-{i:05d}.parquet" for i in range(count)}
    for info in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)):
        if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-"):
            fs.delete_file(info.path)
    for sub in ("scores", "rejects"):
        infos = fs.get_file_info(pafs.FileSelector(sources.join(base, sub), allow_not_found=True))
        for info in infos:
            if info.type == pafs.FileType.File and info.base_name not in keep:
                log.info("removing leftover %s", info.path)
                fs.delete_file(info.path)


def _aggregate(plan_: dict, stats: list[dict]) -> dict:
    total = {k: sum(s[k] for s in stats) for k in ("rows_in", "scored", "rejected", "superseded")}
    reasons: dict[str, int] = {}
    labels: dict[str, int] = {}
    for s in stats:
        for k, v in s["reasons"].items():
            reasons[k] = reasons.get(k, 0) + v
        for k, v in s["labels"].items():
            labels[k] = labels.get(k, 0) + v
    edges = stats[0]["hist_edges"]
    hist = [sum(col) for col in zip(*(s["hist"] for s in stats), strict=True)] if edges else None
    mins = [s["score_min"] for s in stats if s["score_min"] is not None]
    maxs = [s["score_max"] for s in stats if s["score_max"] is not None]
    return {
        **{k: plan_[k] for k in ("batch_run_id", "run_id", "dataset", "model", "version", "version_chosen_by",
                                 "source", "data_rev", "data_md5", "output")},
        "trigger": plan_.get("trigger"),
        "model_md5": plan_.get("model_md5"),  # of the skops file that scored (None: planned before it was kept)
        **total,
        "partitions": len(stats),
        "reject_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "labels": labels or None,
        "score": {"min": min(mins) if mins else None, "max": max(maxs) if maxs else None,
                  "mean": sum(s["score_sum"] for s in stats) / total["scored"] if total["scored"] else None,
                  "hist_edges": edges, "hist": hist},
        "files": {"scores": f"{plan_['output']}/scores/", "rejects": f"{plan_['output']}/rejects/"},
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def find_runs(batch_id: str, dataset: str | None = None) -> list:
    """The MLflow runs of a batch run id (one per dataset it scored; [] before finalize)."""
    from include.tracking import client, configure_mlflow

    exp_id = configure_mlflow(EXPERIMENT)
    query = f"tags.batch_run_id = '{batch_id}'" + (f" and tags.dataset = '{dataset}'" if dataset else "")
    return client().search_runs([exp_id], filter_string=query, max_results=50)


def find_run(batch_id: str, dataset: str | None = None):
    """The MLflow run of a batch run id and dataset (None if it has none yet)."""
    runs = find_runs(batch_id, dataset)
    return runs[0] if runs else None


def _log_run(plan_: dict, manifest: dict) -> str:
    """One FINISHED MLflow run per batch run, linked to the model version (looked up before created)."""
    from include.tracking import client, configure_mlflow, with_retry

    c = client()
    existing = find_run(plan_["batch_run_id"], plan_["dataset"])
    if existing is not None and existing.info.status == "FINISHED":
        return existing.info.run_id
    exp_id = configure_mlflow(EXPERIMENT)
    mv = with_retry(c.get_model_version, plan_["model"], plan_["version"])
    tags = {"batch_run_id": plan_["batch_run_id"], "dag_run_id": plan_["run_id"], "dataset": plan_["dataset"],
            "model_name": plan_["model"], "model_version": str(plan_["version"]), "model_run_id": mv.run_id,
            "model_uri": f"models:/{plan_['model']}/{plan_['version']}", "source": plan_["source"],
            "data_rev": plan_["data_rev"] or "", "output": plan_["output"], "model_md5": plan_.get("model_md5") or "",
            "mlflow.runName": f"batch {plan_['dataset']} {plan_['batch_run_id']}"[:250]}
    run = existing or c.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    for k in ("rows_in", "scored", "rejected", "superseded", "partitions"):
        c.log_metric(rid, k, float(manifest[k]))
    if manifest["score"]["mean"] is not None:
        c.log_metric(rid, "score_mean", manifest["score"]["mean"])
    c.log_dict(rid, manifest, "manifest.json")
    c.set_terminated(rid, "FINISHED")
    return rid


