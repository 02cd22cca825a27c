"""What a `deploy` run deploys: one candidate per registered model, from whichever trigger started it.

* scheduled on the `model_candidate` Asset: every model with a triggering event (its newest
  version); two datasets whose challengers passed the gate together deploy side by side;
* by hand (UI form / REST): ``model`` or ``dataset`` picks the model (each dataset owns one), and
  ``version`` is a number or an alias (``challenger`` by default, ``champion`` to redeploy);
* neither (the UI form's defaults): every dataset's model that has a ``challenger``;
* ``rollback_to`` (a version number): that version of the model, at once, audited as a rollback
  (``rollback_of`` names the champion it replaces).

Versions already champion and serving are dropped here (a re-run changes nothing).
"""

from __future__ import annotations

from typing import Any

from include.assets import MODEL_CANDIDATE, asset_extras, newest_per

ALIASES = ("challenger", "champion")


def requested(params: dict, triggering_asset_events: Any = None) -> list[dict]:
    """[{dataset, model, version-or-alias}] before any registry lookup."""
    from include.catalog import dataset_for_model, dataset_names, model_for, single_dataset_or_fail
    from include.spec import SpecError

    model, dataset, version = params.get("model") or None, params.get("dataset") or None, params.get("version") or None
    rollback_to = params.get("rollback_to")
    if rollback_to not in (None, ""):
        if version is not None:
            raise SpecError(f"give either version ({version}) or rollback_to ({rollback_to}), not both")
        if not str(rollback_to).isdigit():
            raise SpecError(f"rollback_to must be a version number, got {rollback_to!r}")
        if model is None and dataset is None:
            dataset = single_dataset_or_fail("rollback_to")
        model = model or model_for(dataset)
        owner = dataset_for_model(model)
        if dataset is not None and dataset != owner:
            raise SpecError(f"model {model!r} belongs to dataset {owner!r}, not {dataset!r}")
        return [{"dataset": owner, "model": model, "version": str(rollback_to), "rollback": True}]
    events = newest_per(asset_extras(triggering_asset_events, MODEL_CANDIDATE), "model")
    if model is None and dataset is None and version is None and events:
        return [{"dataset": e.get("dataset") or dataset_for_model(e["model"]), "model": e["model"],
                 "version": str(e["version"])} for e in events]
    if model is None and dataset is None:
        if version is not None:
            dataset = single_dataset_or_fail("deploy of a version number")
        else:
            # the UI form's defaults: every dataset's challenger, where there is one
            return [{"dataset": d, "model": model_for(d), "version": "challenger", "optional": True}
                    for d in dataset_names()]
    if model is None:
        model = model_for(dataset)
    owner = dataset_for_model(model)
    if dataset is not None and dataset != owner:
        raise SpecError(f"model {model!r} belongs to dataset {owner!r}, not {dataset!r}")
    if version is None:
        version = next((str(e["version"]) for e in events if e["model"] == model), "challenger")
    return [{"dataset": owner, "model": model, "version": str(version)}]


def resolve(params: dict, triggering_asset_events: Any = None) -> list[dict]:
    """Candidates with concrete version numbers, minus those already champion and serving."""
    from include.deployment import already_deployed
    from include.spec import SpecError
    from include.tracking import alias_version, configure_mlflow

    configure_mlflow()
    out = []
    for want in requested(params, triggering_asset_events):
        version = want["version"]
        if version in ALIASES:
            version = alias_version(want["model"], version)
            if version is None:
                if want.get("optional"):
                    print(f"{want['model']} has no {want['version']} version: nothing to deploy for it")
                    continue
                raise SpecError(f"{want['model']} has no version with alias {want['version']!r}")
        elif not version.isdigit():
            raise SpecError(f"version must be a number or one of {ALIASES}, got {version!r}")
        if want.get("rollback"):
            from mlflow.exceptions import MlflowException

            from include.tracking import client, is_not_found

            try:
                client().get_model_version(want["model"], str(version))
            except MlflowException as err:
                if not is_not_found(err):
                    raise  # an outage: retried
                raise SpecError(f"rollback_to: {want['model']} has no version {version}") from err
            want = {**want, "rollback_of": alias_version(want["model"], "champion")}
        if already_deployed(want["model"], str(version)):
            print(f"{want['model']} v{version} is already champion and serving: nothing to do")
            continue
        out.append({k: v for k, v in {**want, "version": str(version)}.items() if k not in ("optional", "rollback")})
    return out
