"""Model I/O: how a trained pipeline is saved to its MLflow run and loaded back, and where a training
run keeps the artifacts that others read (the holdout, the training keys, the lock).

Cheap to import (standard library only; MLflow and skops load inside the functions): the gate, the
model server, infra validation and batch scoring load models without importing the training code.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

# Types that skops does not trust by default but our own pipelines contain. Computed from the fitted
# pipelines of every family (``skops.io.get_untrusted_types``); tests/unit/test_training.py checks
# that each family needs exactly these and nothing else. Used at save (MLflow verifies the dump
# loads) and at load (:func:`load_model` passes this list, never the one stored in the artifact).
SKOPS_TRUSTED_TYPES: list[str] = [
    "numpy.dtype",  # OneHotEncoder(dtype=np.float64) stores a dtype object
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",  # the trees of "hgb"
]

MODEL_ARTIFACT = "model"
HOLDOUT_ARTIFACT = "holdout/holdout.parquet"
# The keys of the rows that shaped the model (its training and validation splits): whoever scores
# this version later must leave them out, or it is graded on rows it has memorised.
TRAINING_KEYS_ARTIFACT = "lineage/training_keys.parquet"
LOCK_FILE = "constraints.txt"  # logged as environment/constraints.txt of every training run


def log_model(model: Pipeline, rows) -> Any:
    """Log ``model`` to the active run as :data:`MODEL_ARTIFACT` in skops format; ``rows``: training
    rows of its input columns (the input example and the signature). Returns MLflow's ModelInfo."""
    import mlflow
    from mlflow.models import infer_signature

    # the signature describes the pyfunc flavor (predict -> labels); scores: predict_scores()
    signature = infer_signature(rows.head(500), model.predict(rows.head(500)))
    return mlflow.sklearn.log_model(
        model, name=MODEL_ARTIFACT, signature=signature, input_example=rows.head(5),
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        pip_requirements=pip_requirements(),
    )


def pip_requirements() -> list[str]:
    """Pinned requirements of the model (explicit: skips MLflow's slow inference subprocess)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")]


def load_model(name: str, version: str | int) -> Pipeline:
    """The fitted pipeline of ``models:/name/version``, loaded with skops and our own allow-list.

    The trusted types come from :data:`SKOPS_TRUSTED_TYPES` in this module, never from the
    artifact (an artifact could list dangerous types in its own MLmodel file); a model needing
    anything else is refused. Only skops-format models are loaded.
    """
    import mlflow

    from include.tracking import configure_mlflow, with_retry

    configure_mlflow()
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = Path(with_retry(mlflow.artifacts.download_artifacts, artifact_uri=uri, dst_path=tmp))
        return load_trusted_skops(skops_file(local, uri).read_bytes(), uri)


def skops_file(local: Path, uri: str) -> Path:
    """The skops file of a downloaded sklearn model (``local`` holds its MLmodel); a ``ValueError``
    when the model is not a skops-format sklearn model (pickles are never loaded)."""
    from mlflow.models import Model

    conf = Model.load(str(local / "MLmodel")).flavors.get("sklearn")
    if conf is None:
        raise ValueError(f"{uri} has no sklearn flavor")
    if conf.get("serialization_format") != "skops":
        raise ValueError(f"{uri} is saved as {conf.get('serialization_format')!r}; only skops models are loaded")
    return local / conf["pickled_model"]


def load_trusted_skops(data: bytes, uri: str):
    """The object in a skops file's bytes, if every type in it is in :data:`SKOPS_TRUSTED_TYPES`;
    a ``ValueError`` naming the others (and ``uri``, where the bytes came from) otherwise."""
    import skops.io

    with warnings.catch_warnings():
        hush_skops_module_scan()
        untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - set(SKOPS_TRUSTED_TYPES))
        if untrusted:
            raise ValueError(f"{uri} contains types outside SKOPS_TRUSTED_TYPES: {untrusted}; refusing to load")
        return skops.io.loads(data, trusted=SKOPS_TRUSTED_TYPES)


def hush_skops_module_scan() -> None:
    """skops looks names up on every loaded module; in an Airflow worker that touches Airflow's
    deprecated aliases and floods the task log with FutureWarnings about them. Not ours to fix."""
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*(is deprecated|deprecated and will be removed).*")
