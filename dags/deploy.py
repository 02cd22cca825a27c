"""
### deploy: build, infra-validate, canary, analyze, promote, watch, or roll back

`resolve_candidates` ─► per model: `build` ─► `prepare_infra_validation`
    ─► `infra_validate_docker` | `infra_validate_local` ─► `switch_traffic` ─► `analyze_canary`
    ─► `promote` ─► `watch_rollback_window`
        └─────────── any failure ──► `rollback`

Scheduled on the `model_candidate` Asset (every model whose version passed the gate in `train`
deploys, each in its own mapped group), or run by hand with a dataset or model and a version
(`challenger` by default). Each dataset's model is served at `/models/<model>/...` on the serving
edge (Caddy); deploying or rolling back one never touches another's. The canary, its analysis and
the rollback window follow the dataset's deploy policy (`include/policies/deploy_<dataset>.yaml`;
the `policy` Param overrides it for one run).

* **build**: the serving image for the version (Docker API), reused when the code has not changed;
  with no Docker engine (`MLOPS_DEPLOY_BACKEND=local`, or `auto` without an engine) servers are
  local uvicorn processes instead.
* **infra validation**: `prepare_infra_validation` saves the golden holdout rows and the offline
  scores training logged for them (XCom: their paths). The check for the backend `build` chose
  runs, the other one skips itself. `infra_validate_docker` is a `DockerOperator`: the serving
  image, run once, loads the version from the registry, scores the rows and compares (credentials
  go in its private environment, never in the rendered fields); `infra_validate_local` runs the
  same check as its own process. A mismatch or a broken artifact fails there, at once (no retry).
* **switch_traffic**: the new server starts next to the champion; once ready it gets the policy's
  **canary** share of the traffic (e.g. 10%; a `X-Model-Version: N` header pins a request to a
  version). The first deploy of a model, a canary weight of 0 and `rollback_to` switch all at once.
* **analyze_canary**: waits for the canary's traffic, then compares it with the champion on live
  requests: 5xx rate, p99 latency, the distribution of the scores served (KS). A failing canary is
  rolled back (the champion never changed) and the run fails with the reasons.
* **promote**: all traffic to the new version, then the alias `champion` moves; audited and emitted
  as the `deployment` Asset. The old champion stays warm behind it as the edge's fallback.
* **watch_rollback_window**: the new champion is watched for the policy's window; failing health
  checks or a 5xx breach roll back automatically: the edge and the `champion` alias go back to the
  previous version, audited with the reason.
* **rollback**: if any step fails, the edge serves the previous champion, the alias follows, the new
  server is stopped, and the run fails saying why.

`rollback_to=<version>` (Param) rolls back by hand: that version is redeployed at once (its warm
server reused when it is the fallback), audited as a rollback by the user who triggered the run.
Re-running a deploy of the version that is already champion and serving changes nothing.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task, task_group

from include.assets import DEPLOYMENT, MODEL_CANDIDATE
from include.catalog import dataset_names, model_names
from include.infra_validation_operator import infra_validation_task

DATASETS, MODELS = dataset_names(), sorted(model_names())


def _trigger(dag_run) -> dict:
    """Who and what started this run, for the audit records (the UI user for manual runs)."""
    return {"dag_run_id": dag_run.run_id, "run_type": str(dag_run.run_type),
            "user": getattr(dag_run, "triggering_user_name", None)}


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
        "rollback_to": Param(None, type=["null", "integer", "string"], title="Roll back to version",
                             description="Roll the model (dataset/model above) back to this version at once: no "
                                         "canary, audited as a rollback by you. Empty: a normal deploy."),
        "policy": Param({}, type="object", title="Deploy policy override (this run)",
                        description="Keys of the dataset's deploy policy to override for this run, e.g. "
                                    '{"canary": {"weight": 0.5, "max_seconds": 60}, "rollback_window": '
                                    '{"seconds": 30}}. Empty: the policy file (include/policies/deploy_<dataset>.yaml).'),
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
    def prepare_infra_validation(built: dict, dag_run=None) -> dict:
        from include.deployment import prepare_infra_validation

        request = prepare_infra_validation(built["model"], built["version"], built["dataset"], built["image"],
                                           built["backend"], dag_run.run_id)
        print(f"golden rows {request['golden']}, offline scores {request['expected']}, verdict to {request['results']}")
        return request

    @task(multiple_outputs=False)
    def infra_validate_local(request: dict) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.deployment import DeployError, infra_validate_local
        from include.failfast import fail_fast

        if request["backend"] != "local":
            raise AirflowSkipException(f"the {request['backend']} backend validates in infra_validate_docker")
        # the same process fails the same way: a mismatch or a broken artifact is not retried
        with fail_fast(DeployError):
            verdict = infra_validate_local(request)
        print(f"infra validation passed: {verdict}")

    # after whichever validation ran (the other one skipped itself)
    @task(multiple_outputs=False, trigger_rule="none_failed_min_one_success")
    def switch_traffic(built: dict, params=None) -> dict:
        from include.deploy_policy import load_policy
        from include.deployment import get_backend, start_release
        from include.failfast import fail_fast

        with fail_fast(ValueError):
            policy = load_policy(built["dataset"], params.get("policy"))
        weight = 0.0 if built.get("rollback_of") else policy.canary.weight
        release = start_release(built["model"], built["version"], built["dataset"], built["image"],
                                get_backend(built["backend"]), canary_weight=weight)
        if release["phase"] == "canary":
            print(f"canary: {built['model']} v{built['version']} gets {weight:.0%} of the traffic at "
                  f"{release['instance']['url']}, v{release['previous']['version']} the rest")
        else:
            print(f"the edge now serves {built['model']} v{built['version']} at {release['instance']['url']} "
                  f"(no canary: {'a rollback' if built.get('rollback_of') else 'first deploy' if not release['previous'] else 'weight 0'})")
        # the policy this release follows, read once: every later phase judges by the same one
        return {**built, "release": release, "policy": policy.model_dump()}

    @task(multiple_outputs=False)
    def analyze_canary(live: dict, dag_run=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from include.canary import analyze
        from include.deploy_policy import DeployPolicy
        from include.deployment import audit, backend_for, rollback

        release = live["release"]
        if release["phase"] != "canary":
            print("no canary phase in this deploy: nothing to analyze")
            return {**live, "analysis": None}
        policy = DeployPolicy.model_validate(live["policy"])
        verdict = analyze(release, policy, alive=lambda: backend_for(release["instance"]).alive(release["instance"]))
        audit({"event": "canary_analysis", "model": live["model"], "version": live["version"],
               "dataset": live["dataset"], "weight": release["weight"], **verdict.as_dict(),
               "trigger": _trigger(dag_run)})
        print(f"canary analysis after {verdict.seconds}s: canary {verdict.canary}, champion {verdict.champion}, "
              f"scores {verdict.scores}")
        if not verdict.passed:
            why = "canary analysis failed: " + "; ".join(verdict.reasons)
            rollback(live["model"], live["version"], reason=why, trigger=_trigger(dag_run))
            raise AirflowFailException(f"{live['model']} v{live['version']} rolled back: {why}")
        return {**live, "analysis": verdict.as_dict()}

    @task(outlets=[DEPLOYMENT], multiple_outputs=False)
    def promote(judged: dict, dag_run=None, outlet_events=None) -> dict:
        from include.deployment import promote

        record = promote(judged["model"], judged["version"], judged["release"], trigger=_trigger(dag_run),
                         analysis=judged.get("analysis"), rollback_of=judged.get("rollback_of"))
        print(f"champion is now {record['model']} v{record['version']} (was {record['previous_champion']})")
        # recorded by Airflow together with this task's success
        outlet_events[DEPLOYMENT].extra = {k: v for k, v in record.items() if k != "instance"} | {
            "dataset": judged["dataset"]}
        return {**judged, "promoted": record}

    @task(multiple_outputs=False)
    def watch_rollback_window(judged: dict, dag_run=None) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from include.canary import watch
        from include.deploy_policy import DeployPolicy
        from include.deployment import backend_for, rollback

        instance = judged["release"]["instance"]
        policy = DeployPolicy.model_validate(judged["policy"])
        print(f"watching {judged['model']} v{judged['version']} for {policy.rollback_window.seconds:.0f}s")
        seen = watch(instance, policy, alive=lambda: backend_for(instance).alive(instance))
        if seen["breach"]:
            result = rollback(judged["model"], judged["version"], reason=seen["breach"], trigger=_trigger(dag_run))
            raise AirflowFailException(f"{judged['model']} v{judged['version']} rolled back automatically: "
                                       f"{seen['breach']}; serving v{result['serving']}")
        print(f"v{judged['version']} held through the rollback window: {seen}")

    @task(trigger_rule="one_failed")
    def rollback(candidate: dict, dag_run=None) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from include.deployment import rollback

        result = rollback(candidate["model"], candidate["version"],
                          reason=f"a deploy step failed in run {dag_run.run_id}; see its log", trigger=_trigger(dag_run))
        raise AirflowFailException(
            f"deploy of {candidate['model']} v{candidate['version']} failed and was rolled back; "
            f"serving: {'v' + str(result['serving']) if result['serving'] else 'nothing'}"
        )

    @task_group
    def release(candidate: dict):
        built = build(candidate)
        request = prepare_infra_validation(built)
        # One check per backend, each skipping itself unless `build` chose its backend (`auto`:
        # docker when an engine can build). Not a @task.branch: inside a mapped task group a
        # branch does not skip the path not taken (apache/airflow#67265, open in 3.3).
        in_docker = infra_validation_task("infra_validate_docker", request_task_id=request.operator.task_id)
        in_process = infra_validate_local(request)
        request >> in_docker
        live = switch_traffic(built)
        [in_docker, in_process] >> live
        judged = analyze_canary(live)
        done = promote(judged)
        watched = watch_rollback_window(done)
        [built, request, in_docker, in_process, live, judged, done, watched] >> rollback(candidate)

    release.expand(candidate=resolve_candidates())


deploy()
