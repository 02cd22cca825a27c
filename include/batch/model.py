"""The model of a batch run: fetched once by plan into the run's output, read there by every score task.

Plan downloads ``models:/<name>/<version>`` once (the registry is asked once per run, not once per
mapped task), checks it is a skops-format sklearn model, and writes its skops file to
``<run>/_model/model.skops`` with the file's md5 in the plan (and so in the manifest and the MLflow
run: the exact bytes that scored). A score task reads that file through the run's filesystem
(local or S3), checks the md5 and, without importing MLflow:

* builds the vectorised fast path straight from the file (:mod:`include.batch.skops_view`, no
  sklearn import) when the pipeline has that shape and the fast path is on;
* else loads the pipeline with skops and the project's allow-list
  (:data:`include.training.model_io.SKOPS_TRUSTED_TYPES`, never a list from the artifact).

A plan written before runs had a ``model_file`` still scores: the model is then loaded from the
registry as before.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.batch import sources

MODEL_FILE = "_model/model.skops"


@dataclass(frozen=True)
class Loaded:
    """What scores a partition: the fast scorer, or the pipeline (then ``fast`` is None)."""

    fast: Any
    pipeline: Any
    classes: list | None


def fetch(name: str, version: str, fs, base: str) -> dict:
    """Download the version's skops file into the run's output; its plan entries."""
    from include.tracking import download_artifact
    from include.training.model_io import skops_file

    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="batch-model-") as tmp:
        local, err = download_artifact(uri, tmp)
        if local is None:
            raise RuntimeError(f"{uri} could not be downloaded: {err}")
        data = skops_file(Path(local), uri).read_bytes()
    path = sources.join(base, MODEL_FILE)
    fs.create_dir(path.rpartition("/")[0], recursive=True)
    tmp_path = sources.temp_name(path)
    with fs.open_output_stream(tmp_path) as fh:
        fh.write(data)
    sources.commit_file(fs, tmp_path, path)
    return {"model_file": MODEL_FILE, "model_md5": hashlib.md5(data).hexdigest(), "model_uri": uri}


def load(part: dict, spec) -> Loaded:
    """The model of a partition's run, loaded once per worker process (cached by run and file md5)."""
    return _load(part["output"], part.get("model_file"), part.get("model_md5"), part["model"], part["version"],
                 spec.name, spec.task)


@functools.lru_cache(maxsize=2)
def _load(output: str, model_file: str | None, md5: str | None, name: str, version: str, dataset: str,
          task: str) -> Loaded:
    from include.config import env_number
    from include.spec import load_spec

    spec = load_spec(dataset)
    fast_on = bool(env_number("MLOPS_BATCH_FASTPATH", 1))
    if not model_file:  # planned before the plan fetched the model
        from include.training.model_io import load_model

        return _from_pipeline(load_model(name, version), spec, fast_on)
    fs, base = sources.filesystem(output)
    with fs.open_input_stream(sources.join(base, model_file)) as fh:
        data = fh.read()
    if hashlib.md5(data).hexdigest() != md5:
        raise RuntimeError(f"{sources.join(output, model_file)} is not the model the plan fetched (md5 differs)")
    if fast_on:
        from include.batch.skops_view import scorer_from_skops

        built = scorer_from_skops(data, spec)
        if built is not None:
            fast, classes = built
            return Loaded(fast, None, classes if task == "classification" else None)
    from include.training.model_io import load_trusted_skops

    return _from_pipeline(load_trusted_skops(data, f"models:/{name}/{version}"), spec, fast_on)


def _from_pipeline(pipeline, spec, fast_on: bool) -> Loaded:
    from include.batch.fastpath import scorer

    classes = list(pipeline.classes_) if spec.task == "classification" else None
    return Loaded(scorer(pipeline, spec) if fast_on else None, pipeline, classes)
