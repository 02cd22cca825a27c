"""
### deploy: build, infra-validate, switch traffic blue/green, promote, or roll back

`resolve_candidate` ─► `build` ─► `infra_validate` ─► `switch_traffic` ─► `promote`
                                         └─────────── any failure ──► `rollback`

Scheduled on the `model_candidate` Asset (a version that passed the gate in `train`), or run by
hand with a model, a version and a target.

* **build**: the serving image for the version (Docker), reused when the code has not changed;
  with no Docker engine (`MLOPS_DEPLOY_BACKEND=local`, or `auto` without an engine) servers are
  local uvicorn processes instead.
* **infra_validate**: a one-shot container (Airflow's Docker provider) loads the version from the
  registry and scores the golden holdout rows; the scores must equal the offline scores.
* **switch_traffic**: the new server starts next to the old one; once ready the gateway flips to
  it atomically (zero failed requests), then its health is watched for a few seconds.
* **promote**: only now the alias `champion` moves; the deployment is audited and emitted as the
  `deployment` Asset; the old server is drained and stopped.
* **rollback**: if build/validation/switch/promote fails, the gateway points back at the old
  champion, the new server is stopped, the alias stays, and the run fails saying why.

Re-running a deploy of the version that is already champion and serving changes nothing.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Metadata, Param, dag, task

from include.assets import DEPLOYMENT, MODEL_CANDIDATE


@dag(
    dag_id="deploy",
    schedule=[MODEL_CANDIDATE],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlops", "deploy"],
    default_args={"owner": "mlops", "retries": 2, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "model": Param("", type="string", title="Model",
                       description="Registered model name; empty = from the triggering model_candidate event "
                                   "or MLOPS_MODEL_NAME."),
        "version": Param("", type="string", title="Version",
                         description="Model version to deploy; empty = the triggering event's, else alias `challenger`."),
        "dataset": Param("sessions", type="string", title="Dataset",
                         description="Dataset spec the model serves (request schema, golden sample)."),
        "target": Param("default", type="string", enum=["default"], title="Target environment",
                        description="Where to deploy; `default` = the gateway at MLOPS_GATEWAY_URL."),
    },
)
def deploy():
    @task
    def resolve_candidate(params=None, triggering_asset_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.assets import newest_asset_extra
        from include.config import settings
        from include.deployment import already_deployed

        event = newest_asset_extra(triggering_asset_events, "model_candidate") or {}
        model = params["model"] or event.get("model") or settings().model_name
        version = params["version"] or event.get("version")
        if not version:
            from include.tracking import client, configure_mlflow

            configure_mlflow()
            version = client().get_model_version_by_alias(model, "challenger").version
        if already_deployed(model, str(version)):
            raise AirflowSkipException(f"{model} v{version} is already champion and serving: nothing to do")
        print(f"deploying {model} v{version}")
        return {"model": model, "version": str(version), "dataset": params["dataset"]}

    @task
    def build(candidate: dict) -> dict:
        from include.deployment import get_backend

        backend = get_backend()
        image = backend.build(candidate["model"], candidate["version"])
        print(f"backend {backend.name}, image {image}")
        return {**candidate, "backend": backend.name, "image": image}

    @task
    def infra_validate(built: dict) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.deployment import DeployError, get_backend, infra_validate

        try:
            result = infra_validate(built["model"], built["version"], built["dataset"], built["image"],
                                    get_backend(built["backend"]))
        except DeployError as err:
            raise AirflowFailException(str(err)) from err  # the same image fails the same way: no retry
        print(f"infra validation passed: {result}")
        return built

    @task
    def switch_traffic(built: dict) -> dict:
        from include.deployment import get_backend, switch_traffic

        switched = switch_traffic(built["model"], built["version"], built["dataset"], built["image"],
                                  get_backend(built["backend"]))
        print(f"gateway now serves v{built['version']} at {switched['instance']['url']}")
        return {**built, "switched": switched}

    @task(outlets=[DEPLOYMENT])
    def promote(live: dict, dag_run=None):
        from include.deployment import promote

        record = promote(live["model"], live["version"], live["switched"],
                         trigger={"dag_run_id": dag_run.run_id, "run_type": str(dag_run.run_type)})
        print(f"champion is now {record['model']} v{record['version']} (was {record['previous_champion']})")
        yield Metadata(DEPLOYMENT, record)

    @task(trigger_rule="one_failed")
    def rollback(candidate: dict, dag_run=None) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from include.deployment import rollback

        result = rollback(candidate["model"], candidate["version"],
                          reason=f"a deploy step failed in run {dag_run.run_id}; see its log")
        raise AirflowFailException(
            f"deploy of {candidate['model']} v{candidate['version']} failed and was rolled back; "
            f"serving: v{result['serving']}"
        )

    candidate = resolve_candidate()
    built = build(candidate)
    validated = infra_validate(built)
    live = switch_traffic(validated)
    done = promote(live)
    [built, validated, live, done] >> rollback(candidate)


deploy()
