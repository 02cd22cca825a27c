"""
### train: fit a challenger on an exact DVC revision, track it in MLflow, gate it against the champion

`resolve_data` ─► `fit` ─► `gate` (one mapped `fit` + `gate` per dataset)

Runs three ways, all with the same Params/conf:
* **scheduled** on the `dataset` Asset: every dataset with a new revision from `ingest` trains on
  that revision (two datasets ingested together train side by side, each into its own model);
* **manually** from the UI trigger form below (dataset, data revision, model family, ...);
* **by API / drift**: `POST /api/v2/dags/train/dagRuns` with conf `{dataset, reason, data_rev, ...}`
  (the `retrain` CLI and `monitor_drift` do this).

`fit` pulls exactly the recorded revision, splits deterministically, fits a scikit-learn Pipeline
built from the dataset spec, logs params/metrics/plots/model to MLflow and registers one version of
the dataset's own registered model (the spec's `model_name`) with lineage tags (data rev + md5,
validation id, code sha, DAG run, reason). A retry never registers a second version, and neither
does a run whose recipe (data rev and window, spec, code, family/hyperparameters/seed) is already a
READY version: it logs "nothing new to train: vN already has this recipe ..." and skips the gate
for that dataset (*Train even if identical* overrides that). `gate`
re-scores that model's champion on the challenger's holdout and applies the dataset's promotion
policy (minimums, regressions, per-slice, paired bootstrap significance). Passed: alias
`challenger` + `model_candidate` Asset (which schedules `deploy`). Rejected: the version is tagged
with the reasons and the run still succeeds (the gate task is skipped). A bad spec, a missing data
revision or an unusable family fails at once (no retries) with the cause.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Metadata, Param, dag, task

from include.assets import DATASET, MODEL_CANDIDATE
from include.catalog import dataset_names

DATASETS = dataset_names()


@dag(
    dag_id="train",
    schedule=[DATASET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "train"],
    default_args={
        "owner": "mlops", "retries": 2, "retry_delay": pendulum.duration(seconds=15),
        "retry_exponential_backoff": True,
    },
    params={
        "dataset": Param(None, type=["null", "string"], enum=[None, *DATASETS], title="Dataset",
                         values_display={"None": "(the triggering events' datasets, else every dataset)",
                                         **{d: d for d in DATASETS}},
                         description="Dataset spec name (include/specs/<name>.yaml). Empty: every dataset "
                                     "with a new revision in the triggering events, else every dataset that has data."),
        "data_rev": Param("latest", type="string", title="Data revision",
                          description="Data-repo git sha to train on; `latest` = newest (or the triggering Asset's rev)."),
        "family": Param("hgb", type="string", enum=["hgb", "logreg", "ridge"], title="Model family",
                        values_display={"hgb": "hgb: gradient-boosted trees (any task)",
                                        "logreg": "logreg: logistic regression (classification)",
                                        "ridge": "ridge: ridge regression (regression)"},
                        description="Estimator family; `logreg` needs a classification dataset, `ridge` a regression one."),
        "hyperparams": Param({}, type="object", title="Hyperparameters",
                             description="Estimator keyword arguments, e.g. {\"max_iter\": 200}."),
        "search": Param(False, type="boolean", title="Hyperparameter search",
                        description="Try a few candidates and keep the best on the validation split."),
        "seed": Param(42, type="integer", minimum=0, title="Seed",
                      description="Seed for the split and the estimator (same rev + seed = same model)."),
        "window_days": Param(0, type="number", minimum=0, title="Training window (days)",
                             description="Fit on rows within N days of the newest one (0 = all data at the rev). "
                                         "Drift retrains use the drift policy's retrain_window_days."),
        "force": Param(False, type="boolean", title="Train even if identical",
                       description="Register a new version even when one with the same recipe (data rev, "
                                   "window, spec, code, family, hyperparameters, seed) exists. Off: such a "
                                   "run trains nothing and skips the gate."),
        "reason": Param("manual", type="string", title="Reason",
                        description="Why this retrain: recorded on the model version's lineage tags."),
        "allow_stale_data": Param(False, type="boolean", title="Allow stale data",
                                  description="Judge a challenger trained on an older data revision than the "
                                              "champion's (e.g. a reproduction run). Off: the gate records "
                                              "\"stale data\" and does not promote it. Recorded in the audit log."),
        "override_approve": Param(False, type="boolean", title="Override gate: approve",
                                  description="Force the gate to pass. Requires a justification."),
        "override_justification": Param(None, type=["null", "string"], title="Override justification",
                                        description="Required only when overriding the gate; goes into the audit log."),
    },
)
def train():
    @task(multiple_outputs=False)
    def resolve_data(params=None, triggering_asset_events=None) -> list[dict]:
        from include.failfast import fail_fast
        from include.train_inputs import resolve

        with fail_fast():
            if params["override_approve"] and not (params["override_justification"] or "").strip():
                from include.spec import SpecError

                raise SpecError("overriding the gate needs a justification (override_justification)")
            lineages = resolve(params, triggering_asset_events)
        for lineage in lineages:
            print(f"training {lineage['dataset']} @ {lineage['data_rev'][:10]} ({lineage['rows']} rows, "
                  f"from {lineage['rev_source']})")
        return lineages

    @task(multiple_outputs=False, map_index_template="{{ dataset }}")
    def fit(lineage: dict, params=None, dag_run=None) -> dict:
        from airflow.sdk import get_current_context

        from include.failfast import fail_fast
        from include.spec import load_spec
        from include.training.inputs import select_window
        from include.training.train import train_and_register
        from include.versioning import DataRepo

        get_current_context()["dataset"] = lineage["dataset"]  # names the mapped task in the UI
        conf = dag_run.conf or {}
        # a drift-triggered run says why: the drifted features and the report land on the version's tags
        trigger = {f"trigger_{k}": ",".join(v) if isinstance(v, list) else v for k, v in conf.items()
                   if k in ("drifted_features", "report_uri", "monitoring_run_id", "model_version", "trigger")}
        with fail_fast():
            spec = load_spec(lineage["dataset"])
            df = select_window(DataRepo().load(lineage["dataset"], lineage["data_rev"], spec), spec,
                               params["window_days"])
            # who triggered it (a UI/API user; None for a scheduled run): tag `trigger_user`
            by = getattr(dag_run, "triggering_user_name", None)
            model = train_and_register(
                df, spec, lineage={**lineage, **trigger, "dag_run_id": dag_run.run_id, "trigger_user": by,
                                   "selection_window_days": params["window_days"] or None},
                family=params["family"], params=params["hyperparams"], search=params["search"],
                seed=params["seed"], reason=params["reason"],
                run_key=f"train/{dag_run.run_id}/{lineage['dataset']}", force=params["force"],
            )
        if model.get("duplicate_of"):
            print(model["message"])
        return {**model, "dataset": lineage["dataset"]}

    @task(outlets=[MODEL_CANDIDATE], map_index_template="{{ dataset }}")
    def gate(model: dict, params=None, dag_run=None):
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowSkipException

        from include.failfast import fail_fast
        from include.gate import evaluate_and_decide

        get_current_context()["dataset"] = model["dataset"]
        if model.get("duplicate_of"):  # the version has met the gate already (or been rejected by it)
            raise AirflowSkipException(model["message"])
        override = None
        if params["override_approve"]:
            override = {"approve": True, "justification": params["override_justification"],
                        "by": getattr(dag_run, "triggering_user_name", None) or f"dag_run {dag_run.run_id}"}
        # scoring the champion on this holdout is deterministic: a schema mismatch (ValueError) stays one
        with fail_fast(ValueError):
            decision = evaluate_and_decide(
                model["model"], model["version"], dataset=model["dataset"],
                trigger={"dag_run_id": dag_run.run_id, "run_type": str(dag_run.run_type),
                         "reason": params["reason"], "user": getattr(dag_run, "triggering_user_name", None)},
                override=override, allow_stale_data=params["allow_stale_data"],
            )
        print(f"gate decision for {model['model']} v{model['version']}: {decision['decision']} "
              f"{decision.get('reasons') or ''}")
        if decision["decision"] != "passed":
            raise AirflowSkipException(f"rejected: {decision.get('reasons')}")
        yield Metadata(MODEL_CANDIDATE, {"dataset": model["dataset"], "model": model["model"],
                                         "version": str(model["version"]), "run_id": model["run_id"]})

    gate.expand(model=fit.expand(lineage=resolve_data()))


train()
