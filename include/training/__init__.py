"""Train a scikit-learn pipeline from a dataset spec and register it in MLflow with full lineage.

Modules, cheapest first. Import from the module: importing the package loads none of them, so the
gate and the model server load models and compute metrics without the training code or MLflow.

* :mod:`.metrics` - the columns a model reads, :func:`~.metrics.predict_scores`, the metric set of
  a task (:func:`~.metrics.compute_metrics`, shared with the gate), slice labels, thread limits.
* :mod:`.model_io` - :func:`~.model_io.load_model` (skops, with this package's own allow-list of
  types), :func:`~.model_io.log_model`, and where a run keeps its holdout, training keys and lock.
* :mod:`.inputs` - input checks and the deterministic train/val/test :func:`~.inputs.split`
  (time-based when the spec has a timestamp; the test split is the gate's holdout).
* :mod:`.lineage` - code identity and the training recipe digest.
* :mod:`.pipeline` - :func:`~.pipeline.build_pipeline`: ColumnTransformer + estimator of a family.
* :mod:`.plots` - the plots logged with every run.
* :mod:`.registry` - one version per ``run_key``: lookup, roll forward/back, registration.
* :mod:`.train` - :func:`~.train.train_and_register` (load -> fit -> score -> record).
"""

from importlib import import_module

# Code written against the single module ``include/training.py`` (other commits' code run by model
# CI's --reproduce, scripts, work in flight) imports names from the package: each name loads its
# module on first use, so ``import include.training.metrics`` stays cheap.
_MODULE_OF = {
    **dict.fromkeys(("HIGHER_IS_BETTER", "METRICS", "MISSING", "PRIMARY_METRIC", "compute_metrics",
                     "compute_threads", "metric_key", "model_input_columns", "positive_label",
                     "predict_scores", "slice_labels", "slice_metrics", "target_array"), "metrics"),
    **dict.fromkeys(("HOLDOUT_ARTIFACT", "LOCK_FILE", "MODEL_ARTIFACT", "SKOPS_TRUSTED_TYPES",
                     "TRAINING_KEYS_ARTIFACT", "load_model", "log_model"), "model_io"),
    **dict.fromkeys(("MIN_ROWS", "TrainingInputError", "check_frame", "select_window", "split"), "inputs"),
    **dict.fromkeys(("LINEAGE_KEYS", "RECIPE_TAG", "code_identity", "code_sha", "training_recipe"), "lineage"),
    **dict.fromkeys(("DEFAULT_PARAMS", "FAMILIES", "SEARCH_SPACE", "build_pipeline", "resolve_params"),
                    "pipeline"),
    **dict.fromkeys(("DvcDatasetSource", "train_and_register", "training_keys_frame"), "train"),
}


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
