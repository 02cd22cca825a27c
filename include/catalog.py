"""Which datasets exist and which registered model each one owns.

The dataset is the unit of everything: a stage never falls back to a global default dataset or
model name, it asks this module. ``dataset_names`` and ``model_names`` only read the spec files'
names and one line of each (stdlib, no YAML parser), so DAG files may call them at parse time to
offer choices in the trigger forms; everything else loads the spec properly.
"""

from __future__ import annotations

import re
from pathlib import Path

_MODEL_LINE = re.compile(r"^model_name:\s*['\"]?([A-Za-z0-9_.\-]+)['\"]?\s*(#.*)?$", re.MULTILINE)


def _specs_dir(specs_dir: Path | None) -> Path:
    if specs_dir is not None:
        return Path(specs_dir)
    from include.config import settings

    return settings().specs_dir


def dataset_names(specs_dir: Path | None = None) -> list[str]:
    """Names of the datasets that have a spec, sorted; [] when the specs dir is missing."""
    d = _specs_dir(specs_dir)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def model_names(specs_dir: Path | None = None) -> dict[str, str]:
    """{registered model name: dataset} for every spec, read cheaply (parse-time safe)."""
    from include.spec import default_model_name  # stdlib-only module: parse-time safe

    d = _specs_dir(specs_dir)
    out = {}
    for name in dataset_names(d):
        m = _MODEL_LINE.search((d / f"{name}.yaml").read_text(errors="replace"))
        out[m.group(1) if m else default_model_name(name)] = name  # the spec's own default
    return dict(sorted(out.items()))


def model_for(dataset: str) -> str:
    """The registered model of ``dataset`` (its spec's ``model_name``); raises SpecError if unknown."""
    from include.spec import load_spec

    return load_spec(dataset).model_name


def dataset_for_model(model: str) -> str:
    """The dataset whose spec owns ``model``; a clear error when no spec does.

    Called at run time, so it parses the specs (the one-line reading of :func:`model_names` is
    for parse-time form choices only).
    """
    from include.spec import SpecError, load_spec

    owners = {load_spec(d).model_name: d for d in dataset_names()}
    if model not in owners:
        raise SpecError(f"no dataset spec names the registered model {model!r}; known models: {sorted(owners)}")
    return owners[model]


def single_dataset_or_fail(what: str) -> str:
    """The only dataset there is, for runs that did not say which; else a clear error."""
    from include.spec import SpecError

    names = dataset_names()
    if len(names) == 1:
        return names[0]
    raise SpecError(f"{what}: say which dataset (the Param/conf `dataset`); known datasets: {names}")
