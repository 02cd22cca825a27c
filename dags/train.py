"""
### train: fit a challenger on an exact DVC revision, track it in MLflow, gate it against the champion

`resolve_data` ─► `fit` ─► `gate`

Runs three ways, all with the same Params/conf:
* **scheduled** on the `dataset` Asset: new data from `ingest` trains on the event's `dvc_rev`;
* **manually** from the UI trigger form below (dataset, data revision, model family, ...);
* **by API / drift**: `POST /api/v2/dags/train/dagRuns` with conf `{reason, data_rev, ...}`
  (the `retrain` CLI and `monitor_drift` do this).

`fit` pulls exactly the recorded revision, splits deterministically, fits a scikit-learn Pipeline
built from the dataset spec, logs params/metrics/plots/model to MLflow and registers one model
version with lineage tags (data rev + md5, validation id, code sha, DAG run, reason). A retry never
registers a second version. `gate` re-scores the champion on the challenger's holdout and applies
the promotion policy (minimums, regressions, per-slice, paired bootstrap significance). Passed:
alias `challenger` + `model_candidate` Asset (which schedules `deploy`). Rejected: the version is
tagged with the reasons and the run still succeeds (the gate task is skipped).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Metadata, Param, dag, task

from include.assets import DATASET, MODEL_CANDIDATE


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
        "dataset": Param("sessions", type="string", title="Dataset",
                         description="Dataset spec name (include/specs/<name>.yaml)."),
        "data_rev": Param("latest", type="string", title="Data revision",
                          description="Data-repo git sha to train on; `latest` = newest (or the triggering Asset's rev)."),
        "family": Param("hgb", type="string", enum=["hgb", "logreg"], title="Model family",
                        description="`hgb`: histogram gradient-boosted trees; `logreg`: logistic regression."),
        "hyperparams": Param({}, type="object", title="Hyperparameters",
                             description="Estimator keyword arguments, e.g. {\"max_iter\": 200}."),
        "search": Param(False, type="boolean", title="Hyperparameter search",
                        description="Try a few candidates and keep the best on the validation split."),
        "seed": Param(42, type="integer", minimum=0, title="Seed",
                      description="Seed for the split and the estimator (same rev + seed = same model)."),
        "window_days": Param(0, type="number", minimum=0, title="Training window (days)",
                             description="Fit on rows within N days of the newest one (0 = all data at the rev). "
                                         "Drift retrains use the drift policy's retrain_window_days."),
        "reason": Param("manual", type="string", title="Reason",
                        description="Why this retrain: recorded on the model version's lineage tags."),
        "override_approve": Param(False, type="boolean", title="Override gate: approve",
                                  description="Force the gate to pass. Requires a justification."),
        "override_justification": Param("", type="string", title="Override justification",
                                        description="Required when overriding the gate; goes into the audit log."),
    },
)
def train():
    @task
    def resolve_data(params=None, triggering_asset_events=None) -> dict:
        from include.train_inputs import resolve

        lineage = resolve(params, triggering_asset_events)
        print(f"training on {lineage['dataset']} @ {lineage['data_rev'][:10]} ({lineage['rows']} rows, "
              f"from {lineage['rev_source']})")
        return lineage

    @task
    def fit(lineage: dict, params=None, dag_run=None) -> dict:
        from include.spec import load_spec
        from include.training import select_window, train_and_register
        from include.versioning import DataRepo

        spec = load_spec(lineage["dataset"])
        df = select_window(DataRepo().load(lineage["dataset"], lineage["data_rev"], spec), spec,
                           params["window_days"])
        conf = dag_run.conf or {}
        # a drift-triggered run says why: the drifted features and the report land on the version's tags
        trigger = {f"trigger_{k}": ",".join(v) if isinstance(v, list) else v for k, v in conf.items()
                   if k in ("drifted_features", "report_uri", "monitoring_run_id", "model_version", "trigger")}
        return train_and_register(
            df, spec, lineage={**lineage, **trigger, "dag_run_id": dag_run.run_id,
                               "selection_window_days": params["window_days"] or None},
            family=params["family"], params=params["hyperparams"], search=params["search"],
            seed=params["seed"], reason=params["reason"], run_key=f"train/{dag_run.run_id}",
        )

    @task(outlets=[MODEL_CANDIDATE])
    def gate(model: dict, params=None, dag_run=None):
        from airflow.sdk.exceptions import AirflowSkipException

        from include.gate import evaluate_and_decide

        override = None
        if params["override_approve"]:
            override = {"approve": True, "justification": params["override_justification"],
                        "by": f"dag_run {dag_run.run_id}"}
        decision = evaluate_and_decide(
            model["model"], model["version"], dataset=params["dataset"],
            trigger={"dag_run_id": dag_run.run_id, "run_type": str(dag_run.run_type),
                     "reason": (dag_run.conf or {}).get("reason", params["reason"])},
            override=override,
        )
        print(f"gate decision for {model['model']} v{model['version']}: {decision['decision']} "
              f"{decision.get('reasons') or ''}")
        if decision["decision"] != "passed":
            raise AirflowSkipException(f"rejected: {decision.get('reasons')}")
        yield Metadata(MODEL_CANDIDATE, {"model": model["model"], "version": str(model["version"]),
                                         "run_id": model["run_id"]})

    gate(fit(resolve_data()))


train()
