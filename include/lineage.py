"""Lineage: from any served prediction back to its model version, data revision, validation
result, code commit, training run, gate decision and deployments.

    lineage --request-id 3f2a...        # one prediction (from the response / X-Request-ID header)
    lineage --model-version 4           # one model version
    lineage --batch-run manual__2026-...  # one batch scoring run (--key <row key>: one of its rows)

Everything it reports is read from where the loop recorded it: the prediction log, the MLflow
registry (version tags), the data repo (git + DVC manifest), the stored validation results and the
append-only audit logs. Nothing is re-computed.
"""

from __future__ import annotations

import argparse
import json
import sys


class LineageError(LookupError):
    pass


def _audit_entries(records: list[dict], model: str, version: str) -> list[dict]:
    return [e for e in records if str(e.get("version")) == version and e.get("model", model) == model]


def model_lineage(model: str, version: str | int) -> dict:
    """Where a registered version came from and what happened to it since."""
    from mlflow.exceptions import MlflowException

    from include.config import settings
    from include.recordlog import deploy_audit_log
    from include.tracking import client, configure_mlflow, is_not_found
    from include.versioning import DataRepo, DataRepoError

    s = settings()
    configure_mlflow()
    c = client()
    version = str(version)
    try:
        mv = c.get_model_version(model, version)
    except MlflowException as err:
        if not is_not_found(err):
            raise  # an unreachable or failing registry is not "no such version"
        raise LineageError(f"{model} v{version} is not in the registry: {err}") from err
    tags = dict(mv.tags)
    data = {k: tags.get(k) for k in ("dataset", "data_rev", "data_md5", "validation_id")}
    validation = s.reports_dir / "validations" / f"{tags.get('validation_id')}.json"
    data["validation_report"] = str(validation) if validation.exists() else None
    try:
        repo_view = DataRepo(s).lineage(tags["dataset"], tags["data_rev"])
        data["batches_validation_ids"] = repo_view["validation_ids"]
        data["rows"] = repo_view["rows"]
        data["data_repo"] = str(s.data_repo)
    except (DataRepoError, KeyError) as err:
        data["data_repo_error"] = str(err)
    run = c.get_run(mv.run_id)
    return {
        "model": model,
        "version": version,
        "aliases": list(getattr(mv, "aliases", []) or []),
        "data": data,
        "code": {"code_sha": tags.get("code_sha"), "code_dirty": tags.get("code_dirty")},
        "training": {
            "mlflow_run_id": mv.run_id,
            "dag_run_id": tags.get("dag_run_id"),
            "reason": tags.get("reason"),
            "family": tags.get("family"),
            "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_") and "__" not in k},
        },
        "trigger": {k[len("trigger_"):]: v for k, v in tags.items() if k.startswith("trigger_")},
        "gate": {"decision": tags.get("gate_decision"), "reasons": tags.get("gate_reasons"),
                 "report": tags.get("gate_report")},
        "deployments": _audit_entries(deploy_audit_log(s=s).read(), model, version),
    }


def trace_prediction(request_id: str, *, model: str | None = None) -> dict:
    """The logged prediction with this request id, and the lineage of the version that made it."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from include.catalog import model_names
    from include.config import settings
    from include.serving.predlog import list_files

    s = settings()
    if model is None:  # a request id is unique across models: look in every model's log
        for candidate in model_names():
            try:
                return trace_prediction(request_id, model=candidate)
            except LineageError:
                continue
        raise LineageError(f"request {request_id!r} is not in the prediction log of any model "
                          f"({', '.join(model_names())}) under {s.predictions_dir}")
    files = list_files(s.predictions_dir, model)
    if not files:
        raise LineageError(f"no prediction log for {model} under {s.predictions_dir}")
    table = ds.dataset([str(f) for f in files], format="parquet").to_table(
        filter=pc.field("request_id") == request_id)
    if table.num_rows == 0:
        raise LineageError(f"request {request_id!r} is not in the prediction log of {model} "
                           f"({len(files)} files; rows are flushed every few seconds)")
    rows = table.to_pandas()
    versions = sorted(set(rows["model_version"].astype(str)))
    records = json.loads(rows.to_json(orient="records", date_format="iso"))
    return {"request_id": request_id, "rows": records,
            "lineage": [model_lineage(model, v) for v in versions]}


def trace_batch(batch_run: str, *, key: str | None = None, dataset: str | None = None) -> dict:
    """A batch scoring run (by its batch run id or DAG run id): its manifest, the lineage of the
    model version that scored it and, with ``key``, that row's prediction and/or rejection.

    A scheduled run may score several datasets: then ``dataset`` says which one."""
    from include.batch.job import MANIFEST, PLAN, batch_run_id, find_runs
    from include.batch.sources import filesystem, join, read_text

    bid = batch_run_id(batch_run)
    runs = find_runs(bid, dataset)
    if not runs:
        raise LineageError(f"no batch scoring run {batch_run!r}{f' of dataset {dataset}' if dataset else ''} in "
                           "MLflow (experiment 'batch-scoring'); a run is recorded when its finalize task succeeds")
    if len(runs) > 1:
        names = sorted(r.data.tags.get("dataset", "?") for r in runs)
        raise LineageError(f"batch run {batch_run!r} scored several datasets {names}: name one with --dataset")
    run = runs[0]
    output = run.data.tags["output"]
    fs, base = filesystem(output)
    manifest = json.loads(read_text(fs, join(base, MANIFEST)) or read_text(fs, join(base, PLAN)) or "{}")
    out = {"batch_run_id": bid, "mlflow_run_id": run.info.run_id, "output": output, "manifest": manifest,
           "lineage": model_lineage(run.data.tags["model_name"], run.data.tags["model_version"])}
    if key is not None:
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        from include.spec import load_spec

        key_col = load_spec(run.data.tags["dataset"]).key
        found = {}
        for part in ("scores", "rejects"):
            dataset = ds.dataset(join(base, part), filesystem=fs, format="parquet",
                                 exclude_invalid_files=True, ignore_prefixes=[".", "_"])
            table = dataset.to_table(filter=pc.field(key_col) == key)
            found[part] = table.to_pylist()
        if not (found["scores"] or found["rejects"]):
            raise LineageError(f"no row with {key_col} = {key!r} in batch run {bid} ({output})")
        out["rows"] = found
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lineage", description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--request-id", help="a served prediction's request id")
    group.add_argument("--model-version", help="a registered model version")
    group.add_argument("--batch-run", help="a batch_score run: its DAG run id (or the batch run id of its output)")
    ap.add_argument("--key", default=None, help="with --batch-run: one row's key (its score or its rejection)")
    ap.add_argument("--dataset", default=None,
                    help="with --batch-run: the dataset, when the run scored several (a scheduled run may)")
    ap.add_argument("--model", default=None,
                    help="registered model name (default: every model for --request-id; the only dataset's "
                         "model for --model-version)")
    args = ap.parse_args(argv)
    from include.catalog import model_for, single_dataset_or_fail
    from include.spec import SpecError

    if args.batch_run:
        try:
            out = trace_batch(args.batch_run, key=args.key, dataset=args.dataset)
        except LineageError as err:
            print(f"lineage: {err}", file=sys.stderr)
            return 2
        print(json.dumps(out, indent=2, default=str))
        return 0
    try:
        model = args.model or (None if args.request_id else model_for(single_dataset_or_fail("lineage")))
    except SpecError as err:
        print(f"lineage: {err}", file=sys.stderr)
        return 2
    try:
        out = (trace_prediction(args.request_id, model=model) if args.request_id
               else model_lineage(model, args.model_version))
    except LineageError as err:
        print(f"lineage: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
