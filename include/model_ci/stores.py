"""The stores model CI reads and must not change: the throw-away MLflow store the candidate trains
into, a snapshot of the real registry (compared before and after), and the data repo with its DVC
remote."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from unittest import mock


@contextmanager
def scratch_store(root: Path):
    """MLflow pointed at a throw-away SQLite store + artifact dir under ``root`` for the block.

    Everything :func:`include.training.train.train_and_register` does (run, model, registered version)
    lands there; the real stores are restored on exit, whatever happens.
    """
    import mlflow

    db = f"sqlite:///{root / 'mlflow.db'}"
    try:
        with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": db, "MLFLOW_REGISTRY_URI": db,
                                          "MLOPS_MLFLOW_ARTIFACT_ROOT": (root / "artifacts").as_uri()}):
            yield
    finally:
        from include.config import settings

        mlflow.set_tracking_uri(settings().mlflow_tracking_uri)
        mlflow.set_registry_uri(settings().mlflow_registry_uri)


def registry_snapshot(c, name: str) -> dict:
    """Everything model CI must not change in the real registry: versions, their tags and aliases,
    the model's tags and aliases."""
    from include.tracking import with_retry

    rm = with_retry(c.get_registered_model, name)
    versions = with_retry(c.search_model_versions, f"name='{name}'")
    return {
        "model_tags": dict(rm.tags or {}),
        "aliases": dict(sorted((a, str(v)) for a, v in (rm.aliases or {}).items())),
        "versions": {str(v.version): {"tags": dict(v.tags or {}), "run_id": v.run_id, "status": v.status}
                     for v in versions},
    }


def data_repo():
    """The data repo to load the champion's rev from, with its DVC remote set from the environment.

    A CI job has a fresh ``git clone`` of the data repo: it holds the manifests and DVC pointers
    but no DVC remote, because the stages keep the remote in the untracked ``.dvc/config.local``
    (``MLOPS_DVC_REMOTE`` + the S3 endpoint, machine-specific). Without it DVC has nowhere to pull
    the champion's rows from. When ``MLOPS_DVC_REMOTE`` is set, the clone gets it the way every
    stage configures its repo (:meth:`DataRepo.ensure`); unset, the repo is used as it is (the
    embedded stack's repo is already configured).
    """
    from include.versioning import DataRepo

    repo = DataRepo()
    if (repo.path / ".dvc").is_dir() and os.environ.get("MLOPS_DVC_REMOTE", "").strip():
        with repo.lock():
            repo.ensure()
    return repo
