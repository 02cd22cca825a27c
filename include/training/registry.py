"""The registry side of training: one model version per ``run_key``, found again on a retry.

A retry first settles what an interrupted attempt left (:func:`find_existing`: roll a committed
run forward, roll anything else back); a recipe already registered is not trained twice
(:func:`same_recipe`); registration survives a lost answer (:func:`register`) and a failure after
it leaves no half-registered version (:func:`cleanup_failed`).
"""

from __future__ import annotations

import logging

import mlflow

from include.tracking import client, is_unreachable, with_retry
from include.training.inputs import TrainingInputError
from include.training.lineage import RECIPE_TAG
from include.training.model_io import HOLDOUT_ARTIFACT

log = logging.getLogger(__name__)

# Run tags that describe the run, not the version (every other non-system run tag is a version tag).
MODEL_URI_TAG = "model_uri"
RUN_ONLY_TAGS = frozenset({"code_dirty", "registered_version", MODEL_URI_TAG})


def validate_run_key(run_key: str) -> None:
    if not isinstance(run_key, str) or not run_key.strip():
        raise TrainingInputError("run_key must be a non-empty string (e.g. the DAG run id and the dataset)")
    if any(ch in run_key for ch in "'\"\\") or len(run_key) > 250:
        raise TrainingInputError(f"run_key {run_key!r} must be at most 250 characters without quotes or backslashes")


def versions_with_key(name: str, run_key: str, *, once: bool = False) -> list:
    """``once``: a single request, for callers that are themselves a retry loop or a cleanup that a
    later attempt redoes (nested retries on a dead server only delay the task's failure)."""
    c = client()
    query = f"name='{name}' and tags.run_key='{run_key}'"
    return c.search_model_versions(query) if once else with_retry(c.search_model_versions, query)


def result_from_version(mv) -> dict:
    run = with_retry(client().get_run, mv.run_id)
    return {
        "model": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "metrics": dict(run.data.metrics),
        "holdout_uri": f"runs:/{mv.run_id}/{HOLDOUT_ARTIFACT}",
        "reused": True,
    }


def find_existing(name: str, run_key: str, experiment_id: str) -> dict | None:
    """The complete version for ``run_key``, after finishing or removing what an attempt left.

    Complete = READY and its run FINISHED. A FINISHED run with a logged model but no version is
    committed work whose process died before registering: it is registered now (roll forward).
    Anything else under the key (RUNNING or FAILED runs, versions of unfinished runs) is deleted
    (roll back) and the caller trains again.
    """
    c = client()
    runs = {r.info.run_id: r for r in with_retry(c.search_runs, [experiment_id], f"tags.run_key = '{run_key}'")}
    ready = None
    for mv in versions_with_key(name, run_key):
        run = runs.get(mv.run_id)  # a deleted run is not returned: its version is not complete either
        if ready is None and mv.status == "READY" and run is not None and run.info.status == "FINISHED":
            ready = mv
            continue
        log.warning("deleting model version %s v%s left by an interrupted attempt (version %s, run %s)",
                    name, mv.version, mv.status, run.info.status if run else "deleted")
        with_retry(c.delete_model_version, name, mv.version)
    if ready is None:
        committed = sorted((r for r in runs.values()
                            if r.info.status == "FINISHED" and r.data.tags.get(MODEL_URI_TAG)),
                           key=lambda r: r.info.start_time)
        if committed:
            run = committed[0]
            log.warning("run %s (run_key %s) finished without its version: registering it", run.info.run_id, run_key)
            tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.") and k not in RUN_ONLY_TAGS}
            ready = register(run.data.tags[MODEL_URI_TAG], name, tags, run_key)
    if ready is not None and runs.get(ready.run_id) is not None \
            and runs[ready.run_id].data.tags.get("registered_version") != str(ready.version):
        with_retry(c.set_tag, ready.run_id, "registered_version", str(ready.version))
    keep = {ready.run_id} if ready else set()
    for run in runs.values():
        if run.info.run_id not in keep:
            log.warning("deleting run %s (run_key %s, %s) that has no complete version",
                        run.info.run_id, run_key, run.info.status)
            if run.info.status == "RUNNING":
                with_retry(c.set_terminated, run.info.run_id, "FAILED")
            with_retry(c.delete_run, run.info.run_id)
    return result_from_version(ready) if ready else None


def same_recipe(name: str, recipe: str) -> dict | None:
    """The oldest complete version (READY, run FINISHED) of ``name`` trained from ``recipe``, as a
    :func:`~include.training.train.train_and_register` result with ``duplicate_of`` and ``message``;
    None if there is none."""
    c = client()
    for mv in sorted(with_retry(c.search_model_versions, f"name='{name}' and tags.{RECIPE_TAG}='{recipe}'"),
                     key=lambda v: int(v.version)):
        if mv.status != "READY" or not mv.run_id:
            continue
        run = with_retry(c.get_run, mv.run_id)
        if run.info.status != "FINISHED" or run.info.lifecycle_stage != "active":
            continue
        t = mv.tags
        params = {k[3:]: v for k, v in sorted(run.data.params.items()) if k.startswith("hp.")}
        message = (f"nothing new to train: v{mv.version} already has this recipe (data rev "
                   f"{t.get('data_rev', '?')[:12]}, code {t.get('code_sha', '?')[:12]}, {t.get('family', '?')} "
                   f"{params} seed {run.data.params.get('seed', '?')}); force=True trains it again")
        return {**result_from_version(mv), "duplicate_of": str(mv.version), "recipe": recipe, "message": message}
    return None


def str_tags(d: dict) -> dict[str, str]:
    return {k: ("" if v is None else str(v))[:5000] for k, v in d.items()}


def register(model_uri: str, name: str, tags: dict[str, str], run_key: str, attempts: int = 4):
    """Register once. After an unreachable-store error, look the version up by ``run_key`` before
    trying again: the request may have been applied even though the answer was lost."""
    tried = False

    def once():
        nonlocal tried
        if tried:
            try:
                found = [v for v in versions_with_key(name, run_key, once=True) if v.run_id]
            except Exception as lookup_exc:
                if not is_unreachable(lookup_exc):
                    raise
                found = []  # still unreachable: try the registration itself again
            if found:
                return found[0]
        tried = True
        return mlflow.register_model(model_uri, name, tags=tags)

    return with_retry(once, attempts=attempts)


def cleanup_failed(name: str, run_key: str, mv) -> bool:
    """No half-registered version may remain: delete any version of this attempt.

    True when none remains; False when the registry could not be asked or a deletion failed, and
    the next attempt's :func:`find_existing` has to judge what is there.
    """
    clean = True
    try:
        versions = versions_with_key(name, run_key, once=True)
    except Exception:  # registry unreachable: the next attempt's find_existing cleans up
        log.exception("could not look up versions for run_key %s during cleanup", run_key)
        versions, clean = ([mv] if mv is not None else []), False
    for v in versions:
        try:
            client().delete_model_version(name, v.version)
            log.warning("deleted model version %s v%s of a failed attempt", name, v.version)
        except Exception:
            log.exception("could not delete model version %s v%s", name, v.version)
            clean = False
    return clean


def set_failed(run_id: str) -> None:
    try:
        client().set_terminated(run_id, "FAILED")
    except Exception:  # the run stays FINISHED without a version; the next attempt registers it
        log.exception("could not mark run %s FAILED", run_id)
