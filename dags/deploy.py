"""
### deploy: build, infra-validate, switch traffic blue/green, promote, or roll back

`resolve_candidates` ─► per model: `build` ─► `infra_validate` ─► `switch_traffic` ─► `promote`
                                       └─────────── any failure ──► `rollback`

Scheduled on the `model_candidate` Asset (every model whose version passed the gate in `train`
deploys, each in its own mapped group), or run by hand with a dataset or model and a version
(`challenger` by default). Each dataset's model is served at `/models/<model>/...` on the gateway;
deploying or rolling back one never touches another's.

* **build**: the serving image for the version (Docker), reused when the code has not changed;
  with no Docker engine (`MLOPS_DEPLOY_BACKEND=local`, or `auto` without an engine) servers are
  local uvicorn processes instead.
* **infra_validate**: a one-shot container (Airflow's Docker provider) loads the version from the
  registry and scores the golden holdout rows; the scores must equal the offline scores.
* **switch_traffic**: the new server starts next to the old one; once ready the gateway flips the
  model's route to it atomically (zero failed requests), then its health is watched for a few seconds.
* **promote**: only now the alias `champion` moves; the deployment is audited and emitted as the
  `deployment` Asset; the old server is drained and stopped.
* **rollback**: if build/validation/switch/promote fails, the gateway points back at the old
  champion, the new server is stopped, the alias stays, and the run fails saying why.

Re-running a deploy of the version that is already champion and serving changes nothing.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Metadata, Param, dag, task, task_group

from include.assets import DEPLOYMENT, MODEL_CANDIDATE
from include.catalog import dataset_names, model_names

DATASETS, MODELS = dataset_names(), sorted(model_names())


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
        "dataset": Param(None, type=["null", "string"], enum=[None, *DATASETS], title="Dataset",
                         values_display={"None": "(the triggering events' models, else every dataset's challenger)",
                                         **{d: d for d in DATASETS}},
                         description="Deploy this dataset's registered model. Empty: the triggering "
                                     "model_candidate events, else the model below, else every dataset's challenger."),
        "model": Param(None, type=["null", "string"], enum=[None, *MODELS], title="Model",
                       values_display={"None": "(the dataset's own model)", **{m: m for m in MODELS}},
                       description="Registered model name (each dataset spec names its own)."),
        "version": Param(None, type=["null", "string"], title="Version", examples=["challenger", "champion"],
                         description="A version number, or an alias: `challenger` (passed the gate; the "
                                     "default) or `champion` (redeploy what serves). Empty: the triggering "
                                     "event's version, else `challenger`."),
        "target": Param("default", type="string", enum=["default"], title="Target environment",
                        description="Where to deploy; `default` = the gateway at MLOPS_GATEWAY_URL."),
    },
)
def deploy():
    @task(multiple_outputs=False)
    def resolve_candidates(params=None, triggering_asset_events=None) -> list[dict]:
        from include.deploy_inputs import resolve
        from include.failfast import fail_fast

        with fail_fast():
            candidates = resolve(params, triggering_asset_events)
        for c in candidates:
            print(f"deploying {c['model']} v{c['version']} (dataset {c['dataset']})")
        return candidates

    @task(multiple_outputs=False)
    def build(candidate: dict) -> dict:
        from include.deployment import get_backend

        backend = get_backend()
        image = backend.build(candidate["model"], candidate["version"])
        print(f"backend {backend.name}, image {image}")
        return {**candidate, "backend": backend.name, "image": image}

    @task(multiple_outputs=False)
    def infra_validate(built: dict) -> dict:
        from include.deployment import DeployError, get_backend, infra_validate
        from include.failfast import fail_fast

        # the same image fails the same way: a mismatch or a schema error is not retried
        with fail_fast(DeployError, KeyError):
            result = infra_validate(built["model"], built["version"], built["dataset"], built["image"],
                                    get_backend(built["backend"]))
        print(f"infra validation passed: {result}")
        return built

    @task(multiple_outputs=False)
    def switch_traffic(built: dict) -> dict:
        from include.deployment import get_backend, switch_traffic

        switched = switch_traffic(built["model"], built["version"], built["dataset"], built["image"],
                                  get_backend(built["backend"]))
        print(f"gateway now serves {built['model']} v{built['version']} at {switched['instance']['url']}")
        return {**built, "switched": switched}

    @task(outlets=[DEPLOYMENT])
    def promote(live: dict, dag_run=None):
        from include.deployment import promote

        record = promote(live["model"], live["version"], live["switched"],
                         trigger={"dag_run_id": dag_run.run_id, "run_type": str(dag_run.run_type),
                                  "user": getattr(dag_run, "triggering_user_name", None)})
        print(f"champion is now {record['model']} v{record['version']} (was {record['previous_champion']})")
        yield Metadata(DEPLOYMENT, {**record, "dataset": live["dataset"]})

    @task(trigger_rule="one_failed")
    def rollback(candidate: dict, dag_run=None) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from include.deployment import rollback

        result = rollback(candidate["model"], candidate["version"],
                          reason=f"a deploy step failed in run {dag_run.run_id}; see its log")
        raise AirflowFailException(
            f"deploy of {candidate['model']} v{candidate['version']} failed and was rolled back; "
            f"serving: {'v' + str(result['serving']) if result['serving'] else 'nothing'}"
        )

    @task_group
    def release(candidate: dict):
        built = build(candidate)
        validated = infra_validate(built)
        live = switch_traffic(validated)
        done = promote(live)
        [built, validated, live, done] >> rollback(candidate)

    release.expand(candidate=resolve_candidates())


deploy()
