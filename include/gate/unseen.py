"""The rows two versions may be compared on: the holdout minus every row either trained on, and how
their data revisions stand to each other (a challenger on older data than the champion's is stale)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrainedKeys:
    """The keys of the rows one model version trained on (training + validation splits).

    ``keys`` is None when they cannot be known; ``source`` says how they were found: "artifact"
    (logged at training), "rebuilt" (its split recipe re-run on its data rev, checked against its
    recorded holdout) or "unknown"; ``detail`` says which artifact, which recipe or why not.
    """

    label: str
    version: str
    keys: frozenset[str] | None
    source: str
    detail: str


def exclude_trained_rows(frame, key: str, trained: list[TrainedKeys]) -> tuple[Any, dict]:
    """``frame`` without the rows whose ``key`` any of ``trained`` fitted or validated on, and a
    record of how many were excluded and why (per version; a row two versions saw counts for both)."""
    labels = frame[key].astype(str).to_numpy()
    seen = np.zeros(len(frame), dtype=bool)
    per_version, notes = [], []
    for t in trained:
        if t.keys is None:
            hit = np.zeros(len(frame), dtype=bool)
            notes.append(f"{t.label}'s training rows are unknown ({t.detail}): none excluded for it, so the "
                         f"comparison may favour it on rows it memorised")
        else:
            hit = np.isin(labels, np.fromiter(t.keys, dtype=object, count=len(t.keys)))
        seen |= hit
        per_version.append({"model": t.label, "version": t.version, "source": t.source, "detail": t.detail,
                            "n_trained": None if t.keys is None else len(t.keys), "n_excluded": int(hit.sum())})
    fresh = frame[~seen].reset_index(drop=True)
    return fresh, {"n_rows": int(len(frame)), "n_fresh": int(len(fresh)), "n_excluded": int(seen.sum()),
                   "exclusions": per_version, "notes": notes}


def exclusion_summary(record: dict) -> str:
    """One line: how many rows remained and why the others were excluded."""
    parts = [f"{e['n_excluded']} that {e['model']} trained on ({e['source']})"
             for e in record["exclusions"] if e["n_excluded"]]
    why = f"; excluded {record['n_excluded']}: " + ", ".join(parts) if parts else "; none excluded"
    return f"{record['n_fresh']} of {record['n_rows']} holdout rows unseen by every model compared{why}"


def _recipe_keys(mv, spec, run) -> tuple[frozenset[str] | None, str]:
    """Rebuild a version's training keys from its recorded recipe (data rev + window + seed +
    fractions) with the split it was trained with, and trust them only if the rebuilt holdout is
    exactly the holdout its run recorded."""
    import mlflow
    import pandas as pd

    from include.tracking import with_retry
    from include.training.inputs import select_window, split
    from include.training.model_io import HOLDOUT_ARTIFACT
    from include.versioning import DataRepo, RevisionNotFound

    tags, params = mv.tags or {}, run.data.params
    rev = tags.get("data_rev") or params.get("data_rev")
    if not rev or rev == "unknown":
        return None, "no keys artifact and no data_rev to rebuild them from"
    try:
        seed, hf, vf = int(params["seed"]), float(params["holdout_frac"]), float(params["val_frac"])
        window = float(tags.get("selection_window_days") or 0)
    except (KeyError, ValueError) as err:
        return None, f"no keys artifact and an incomplete split recipe ({err})"
    recipe = f"data rev {rev[:10]}, window {window:g} days, seed {seed}, fractions {hf:g}/{vf:g}"
    try:
        df = select_window(DataRepo().load(tags.get("dataset") or spec.name, rev, spec), spec, window)
        train, val, test = split(df, spec, seed=seed, holdout_frac=hf, val_frac=vf)
    except (RevisionNotFound, ValueError, FileNotFoundError) as err:  # gone for good: no retry brings it back
        return None, f"no keys artifact; its recipe ({recipe}) could not be re-run: {err}"
    with tempfile.TemporaryDirectory(prefix="gate-recipe-") as tmp:
        recorded = pd.read_parquet(with_retry(mlflow.artifacts.download_artifacts, run_id=mv.run_id,
                                              artifact_path=HOLDOUT_ARTIFACT, dst_path=tmp))
    if spec.key not in recorded.columns or \
            set(recorded[spec.key].astype(str)) != set(test[spec.key].astype(str)) or \
            (len(train), len(val)) != (int(params.get("n_train", -1)), int(params.get("n_val", -1))):
        return None, f"no keys artifact; its recipe ({recipe}) does not reproduce its recorded holdout"
    keys = frozenset(pd.concat([train[spec.key], val[spec.key]]).astype(str))
    return keys, f"rebuilt from its recipe ({recipe}), reproduces its recorded holdout"


def training_keys(mv, spec, label: str, *, c=None) -> TrainedKeys:
    """What ``mv`` trained on: its run's keys artifact, else its rebuilt split recipe, else unknown."""
    import pandas as pd

    from include.tracking import client, download_artifact, with_retry
    from include.training.model_io import TRAINING_KEYS_ARTIFACT

    c = c or client()
    version = str(mv.version)
    with tempfile.TemporaryDirectory(prefix="gate-keys-") as tmp:
        local, _ = download_artifact(f"runs:/{mv.run_id}/{TRAINING_KEYS_ARTIFACT}", tmp)
        if local is not None:
            keys = pd.read_parquet(local)[spec.key].astype(str)
            return TrainedKeys(label, version, frozenset(keys), "artifact", f"runs:/{mv.run_id}/{TRAINING_KEYS_ARTIFACT}")
    # versions trained before the keys were logged
    keys, detail = _recipe_keys(mv, spec, with_retry(c.get_run, mv.run_id))
    return TrainedKeys(label, version, keys, "rebuilt" if keys is not None else "unknown", detail)


def unseen_rows(frame, spec, versions: list[tuple[str, Any]], *, c=None) -> tuple[Any, dict]:
    """The rows of ``frame`` that none of ``versions`` (``[(label, ModelVersion), ...]``) trained on.

    Whoever re-scores a registered model on rows with known labels (this gate, model CI, a canary
    analysis on offline rows) must score on these only: a model graded on its own training rows
    looks better than it is. Returns ``(fresh frame, record)``; see :func:`exclude_trained_rows`.
    """
    trained = [training_keys(mv, spec, label, c=c) for label, mv in versions]
    return exclude_trained_rows(frame, spec.key, trained)


def data_rev_relation(challenger: dict, champion: dict) -> tuple[str, str]:
    """How the challenger's data revision stands to the champion's, from the data repo's history:
    "same" (same rev, or same dataset content by md5), "older" (a strict ancestor), "newer",
    "diverged" or "unknown"; and a sentence saying why. ``challenger``/``champion``: version tags."""
    from include.versioning import DataRepo, DataRepoError

    a, b = challenger.get("data_rev"), champion.get("data_rev")
    if not a or not b or "unknown" in (a, b):
        return "unknown", "a data rev is not recorded"
    if a == b:
        return "same", f"both trained on data rev {a[:10]}"
    md5a, md5b = challenger.get("data_md5"), champion.get("data_md5")
    if md5a and md5a == md5b and md5a != "unknown":
        return "same", f"data revs {a[:10]} and {b[:10]} hold the same dataset (md5 {md5a[:10]})"
    repo = DataRepo()
    try:
        a, b = repo.resolve_rev(a), repo.resolve_rev(b)
    except DataRepoError as err:
        return "unknown", f"data revs {a[:10]}/{b[:10]} cannot be ordered: {str(err).splitlines()[0]}"

    def ancestor(x: str, y: str) -> bool:
        return repo._run("git", "merge-base", "--is-ancestor", x, y, check=False).returncode == 0

    if ancestor(a, b):
        return "older", f"challenger data rev {a[:10]} is an ancestor of the champion's {b[:10]}"
    if ancestor(b, a):
        return "newer", f"challenger data rev {a[:10]} descends from the champion's {b[:10]}"
    return "diverged", f"data revs {a[:10]} and {b[:10]} are on different branches of the data repo"
