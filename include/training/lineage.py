"""What a model version is trained from, as recorded on its tags: the code identity (git sha plus
uncommitted changes) and the training recipe digest. Standard library only."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

from include.config import PROJECT_ROOT
from include.spec import DatasetSpec

LINEAGE_KEYS = ("data_rev", "data_md5", "validation_id", "dataset", "dag_run_id")
# The `dataset` Asset's extra says {dvc_rev, md5}: accepted for {data_rev, data_md5}.
LINEAGE_ALIASES = {"data_rev": "dvc_rev", "data_md5": "md5"}
RECIPE_TAG = "recipe"  # training_recipe(): versions with the same one are the same model


def code_sha() -> str:
    """``git rev-parse HEAD`` of the project, or ``"unknown"`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def code_dirty() -> str:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return "true" if out.stdout.strip() else "false"


def code_identity() -> str:
    """The code a model is trained with: the git sha, plus a digest of the uncommitted changes to
    tracked files under include/ and dags/ (the code, specs and policies) when the checkout is
    dirty; outside git (the Docker image has no .git), a digest of those files."""
    sha = code_sha()
    if sha == "unknown":
        h = hashlib.sha256()
        files = [p for d in ("include", "dags") for p in (PROJECT_ROOT / d).rglob("*")
                 if p.suffix in (".py", ".yaml") and p.is_file()]
        for p in sorted(files):
            h.update(str(p.relative_to(PROJECT_ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
        return "tree:" + h.hexdigest()[:16]
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "diff", "HEAD", "--binary", "--", "include", "dags"],
                             capture_output=True, timeout=30)
        diff = out.stdout if out.returncode == 0 else str(time.time_ns()).encode()
    except (OSError, subprocess.SubprocessError):
        diff = str(time.time_ns()).encode()  # cannot tell what changed: never equal to another run
    return f"{sha}+diff:{hashlib.sha256(diff).hexdigest()[:16]}" if diff else sha


def training_recipe(spec: DatasetSpec, lineage: dict[str, str], *, code: str, family: str, params: dict,
                    seed: int, search: bool, holdout_frac: float, val_frac: float) -> str:
    """A digest of everything that determines the model: the data (dataset, rev, md5 and how rows were
    selected from it), the spec, the code and the training config. Same recipe, same model (fits
    are seeded), so a second version of it would be a duplicate
    (:func:`~include.training.train.train_and_register`)."""
    import dataclasses

    body = {
        "data": {k: lineage.get(k) for k in ("dataset", "data_rev", "data_md5")},
        "selection": {k: str(v) for k, v in sorted(lineage.items()) if k.startswith("selection_") and v is not None},
        "spec": {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("path", "description")},
        "code": code,
        "config": {"family": family, "params": params, "seed": seed, "search": search,
                   "holdout_frac": holdout_frac, "val_frac": val_frac},
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:24]
