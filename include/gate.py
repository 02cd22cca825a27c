"""Statistical promotion gate: challenger vs champion on the SAME holdout rows, with a decision record.

The checks are pure functions of arrays (labels, champion scores, challenger scores, slice labels),
so they unit-test without MLflow; :func:`evaluate_and_decide` wires them to the registry:

1. the challenger's holdout comes from its own run (``holdout/holdout.parquet``, written at
   training), minus every row the challenger or the champion trained on (:func:`unseen_rows`: the
   keys of their training and validation splits). Both models are re-scored on what remains; fewer
   than the policy's ``min_fresh_holdout`` rows is the decision "insufficient fresh holdout". A
   challenger trained on an older data revision than the champion's is "stale data" unless the
   run passes ``allow_stale_data``;
2. checks: absolute minimums, no regression of secondary metrics beyond a tolerance, no slice
   regression beyond a tolerance (slices from the spec, with a minimum size), and significance:
   the one-sided lower confidence bound of a paired bootstrap of (challenger - champion) on the
   primary metric must exceed ``min_improvement``. Without a champion only the minimums apply;
3. pass: alias ``challenger`` + tags; fail: tags only. A human override (with a justification)
   forces the outcome and is recorded;
4. the decision record goes to the challenger's run (``gate/decision.json``, ``gate/decision.md``)
   and, as one JSON line, to the append-only ``<reports_dir>/audit.jsonl``.

Policies: ``<specs_dir>/../policies/<dataset>.yaml`` (by default ``include/policies/``) or the
per-task defaults below.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from include.training.metrics import HIGHER_IS_BETTER, METRICS

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
DECISION_JSON = "gate/decision.json"
DECISION_MD = "gate/decision.md"
_TAG_MAX = 4900  # model version tag values are capped at 5000 characters


# ------------------------------------------------------------------------------------------ policy


@dataclass(frozen=True)
class Policy:
    """What a challenger must show to pass. Tolerances are positive amounts of allowed worsening."""

    task: str = "classification"
    primary_metric: str = "roc_auc"
    # floors for higher-is-better metrics, ceilings for lower-is-better ones (log_loss, rmse, mae)
    absolute: dict[str, float] = field(default_factory=lambda: {"roc_auc": 0.60})
    # allowed worsening vs the champion per secondary metric
    max_regression: dict[str, float] = field(default_factory=lambda: {"accuracy": 0.02, "log_loss": 0.02})
    slice_metric: str = "roc_auc"
    slice_max_drop: float = 0.05
    slice_min_size: int = 200
    confidence: float = 0.95
    min_improvement: float = 0.0
    n_boot: int = 1000
    seed: int = 0
    # rows of the challenger's holdout that neither model trained on, needed to compare at all;
    # None: 200, or half the holdout when that is smaller (a small dataset still gets verdicts
    # when nothing is excluded, and not when most of its holdout is)
    min_fresh_holdout: int | None = None
    source: str = "defaults"

    def fresh_minimum(self, holdout_rows: int) -> int:
        if self.min_fresh_holdout is not None:
            return self.min_fresh_holdout
        return max(1, min(DEFAULT_MIN_FRESH, math.ceil(holdout_rows / 2)))


DEFAULT_MIN_FRESH = 200


DEFAULT_POLICIES = {
    "classification": Policy(),
    "regression": Policy(
        task="regression", primary_metric="rmse", absolute={"r2": 0.0}, max_regression={"r2": 0.02},
        slice_metric="r2",
    ),
}

_YAML_KEYS = {"primary_metric", "absolute", "max_regression", "slices", "significance", "min_fresh_holdout"}
_SLICE_KEYS = {"metric": "slice_metric", "max_drop": "slice_max_drop", "min_size": "slice_min_size"}
_SIG_KEYS = {"confidence", "min_improvement", "n_boot", "seed"}


def policy_path(dataset: str, policies_dir: Path | None = None) -> Path:
    if policies_dir is None:
        from include.config import settings

        policies_dir = settings().policies_dir
    return Path(policies_dir) / f"{dataset}.yaml"


def parse_policy(raw: dict | None, task: str, *, source: str = "defaults") -> Policy:
    """Policy from a YAML mapping (see ``include/policies/sessions.yaml``) over the task defaults."""
    base = DEFAULT_POLICIES[task]
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a policy must be a mapping")
    unknown = set(raw) - _YAML_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown policy key(s) {sorted(unknown)}; allowed: {sorted(_YAML_KEYS)}")
    kw: dict[str, Any] = {"source": source}
    if "primary_metric" in raw:
        kw["primary_metric"] = raw["primary_metric"]
    if "absolute" in raw:
        kw["absolute"] = {str(k): float(v) for k, v in (raw["absolute"] or {}).items()}
    if "max_regression" in raw:
        kw["max_regression"] = {str(k): float(v) for k, v in (raw["max_regression"] or {}).items()}
    if raw.get("min_fresh_holdout") is not None:
        fresh = raw["min_fresh_holdout"]
        if isinstance(fresh, bool) or not isinstance(fresh, int) or fresh < 1:
            raise ValueError(f"{source}: min_fresh_holdout must be a whole number of rows >= 1, got {fresh!r}")
        kw["min_fresh_holdout"] = fresh
    slices = raw.get("slices") or {}
    bad = set(slices) - set(_SLICE_KEYS)
    if bad:
        raise ValueError(f"{source}: unknown slices key(s) {sorted(bad)}; allowed: {sorted(_SLICE_KEYS)}")
    for k, attr in _SLICE_KEYS.items():
        if k in slices:
            kw[attr] = slices[k]
    sig = raw.get("significance") or {}
    bad = set(sig) - _SIG_KEYS
    if bad:
        raise ValueError(f"{source}: unknown significance key(s) {sorted(bad)}; allowed: {sorted(_SIG_KEYS)}")
    kw.update(sig)
    policy = replace(base, **kw)
    allowed = METRICS[task]
    named = [policy.primary_metric, policy.slice_metric, *policy.absolute, *policy.max_regression]
    wrong = sorted({m for m in named if m not in allowed})
    if wrong:
        raise ValueError(f"{source}: metric(s) {wrong} are not {task} metrics; use one of {list(allowed)}")
    if not 0.5 <= float(policy.confidence) < 1:
        raise ValueError(f"{source}: confidence must be in [0.5, 1), got {policy.confidence}")
    if int(policy.n_boot) < 100:
        raise ValueError(f"{source}: n_boot must be at least 100, got {policy.n_boot}")
    if any(v < 0 for v in policy.max_regression.values()) or policy.slice_max_drop < 0:
        raise ValueError(f"{source}: tolerances are amounts of allowed worsening and must be >= 0")
    return replace(policy, confidence=float(policy.confidence), n_boot=int(policy.n_boot), seed=int(policy.seed),
                   min_improvement=float(policy.min_improvement), slice_max_drop=float(policy.slice_max_drop),
                   slice_min_size=int(policy.slice_min_size))


def load_policy(dataset: str, task: str, policies_dir: Path | None = None) -> Policy:
    """``<policies_dir>/<dataset>.yaml`` if present, else the defaults of ``task``."""
    path = policy_path(dataset, policies_dir)
    if not path.exists():
        return DEFAULT_POLICIES[task]
    import yaml

    return parse_policy(yaml.safe_load(path.read_text()), task, source=str(path))


# ----------------------------------------------------------------------------------------- metrics


def _orient(metric: str, value: float) -> float:
    """Higher is better after orientation."""
    return value if HIGHER_IS_BETTER[metric] else -value


def metric_value(y: np.ndarray, scores: np.ndarray, metric: str) -> float:
    """One metric on the full arrays (classification: y in {0,1}, scores = P(1))."""
    w = np.ones((1, len(y)))
    return float(weighted_metric(np.asarray(y), np.asarray(scores, dtype=float), w, metric)[0])


def weighted_metric(y: np.ndarray, scores: np.ndarray, w: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` for each row of the weight matrix ``w`` (B x n): vectorized over bootstrap samples.

    A bootstrap sample is a row of multiplicities, so every metric is a weighted sum; AUC uses the
    rank formula (Mann-Whitney) with ties counted as one half, from one sort of the scores.
    """
    total = w.sum(axis=1)
    if metric == "roc_auc":
        order = np.argsort(scores, kind="mergesort")
        s, yy, ws = scores[order], y[order].astype(float), w[:, order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        gp = np.add.reduceat(ws * yy, starts, axis=1)
        gn = np.add.reduceat(ws * (1.0 - yy), starts, axis=1)
        below = np.cumsum(gn, axis=1) - gn
        num = (gp * (below + 0.5 * gn)).sum(axis=1)
        den = gp.sum(axis=1) * gn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)
    if metric in ("accuracy", "f1", "log_loss"):
        yy = y.astype(float)
        pred = (scores >= 0.5).astype(float)
        if metric == "accuracy":
            return w @ (pred == yy).astype(float) / total
        if metric == "log_loss":
            p = np.clip(scores, 1e-15, 1 - 1e-15)
            return w @ -(yy * np.log(p) + (1 - yy) * np.log(1 - p)) / total
        tp = w @ (pred * yy)
        fp = w @ (pred * (1 - yy))
        fn = w @ ((1 - pred) * yy)
        den = 2 * tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, 2 * tp / den, 0.0)
    err = scores - y.astype(float)
    if metric == "rmse":
        return np.sqrt(w @ err**2 / total)
    if metric == "mae":
        return w @ np.abs(err) / total
    if metric == "r2":
        yy = y.astype(float)
        sst = w @ yy**2 - (w @ yy) ** 2 / total
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sst > 0, 1 - (w @ err**2) / sst, np.nan)
    raise ValueError(f"unknown metric {metric!r}")


def metric_set(y: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    return {m: metric_value(y, scores, m) for m in METRICS[task]}


def bootstrap_deltas(y: np.ndarray, champ: np.ndarray, chall: np.ndarray, metric: str, *, n_boot: int = 1000,
                     seed: int = 0, chunk_cells: int = 4_000_000) -> np.ndarray:
    """Paired bootstrap of the improvement (challenger - champion, oriented: > 0 is better).

    Both models are evaluated on the same resampled rows in each replicate. Seeded; memory is
    bounded by evaluating ``chunk_cells / n`` replicates at a time.
    """
    y = np.asarray(y)
    champ = np.asarray(champ, dtype=float)
    chall = np.asarray(chall, dtype=float)
    n = len(y)
    if not (len(champ) == len(chall) == n) or n == 0:
        raise ValueError(f"y, champion and challenger scores must have the same non-zero length "
                         f"({n}, {len(champ)}, {len(chall)})")
    rng = np.random.default_rng(seed)
    step = max(1, min(n_boot, chunk_cells // n))
    out = []
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + (np.arange(b) * n)[:, None]).ravel()
        w = np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)
        d = weighted_metric(y, chall, w, metric) - weighted_metric(y, champ, w, metric)
        out.append(d if HIGHER_IS_BETTER[metric] else -d)
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------ checks


def _check(name: str, passed: bool, value: Any, threshold: Any, reason: str, **extra: Any) -> dict:
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "reason": reason, **extra}


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def check_absolute(metrics: dict[str, float], policy: Policy) -> list[dict]:
    """Each ``policy.absolute`` metric of the challenger against its floor (or ceiling)."""
    out = []
    for m, t in policy.absolute.items():
        v = float(metrics.get(m, float("nan")))
        hib = HIGHER_IS_BETTER[m]
        ok = (v >= t) if hib else (v <= t)
        op = ">=" if hib else "<="
        out.append(_check(
            f"minimum:{m}", ok and not math.isnan(v), v, t,
            f"{m} {_fmt(v)} {op} {t}" if ok else f"{m} {_fmt(v)} fails the absolute limit {op} {t}",
        ))
    return out


def check_regressions(chall: dict[str, float], champ: dict[str, float], policy: Policy) -> list[dict]:
    """Each ``policy.max_regression`` metric may get worse than the champion's by at most its tolerance."""
    out = []
    for m, tol in policy.max_regression.items():
        c, b = float(chall[m]), float(champ[m])
        worse = _orient(m, b) - _orient(m, c)  # > 0: the challenger is worse
        ok = worse <= tol + 1e-12
        out.append(_check(
            f"no_regression:{m}", ok, c, tol,
            (f"{m} {_fmt(c)} vs champion {_fmt(b)} (worse by {_fmt(worse)}, allowed {tol})" if ok else
             f"{m} regressed: {_fmt(c)} vs champion {_fmt(b)}, worse by {_fmt(worse)} > allowed {tol}"),
            champion=b, worsening=worse,
        ))
    return out


def check_slices(y: np.ndarray, champ: np.ndarray, chall: np.ndarray, slices: dict[str, np.ndarray],
                 policy: Policy) -> list[dict]:
    """Per slice value: the slice metric may drop by at most ``slice_max_drop`` (slices below
    ``slice_min_size`` rows, or with one class for AUC, are recorded as skipped and pass)."""
    y = np.asarray(y)
    m = policy.slice_metric
    out = []
    for col, labels in slices.items():
        labels = np.asarray(labels)
        for value in np.unique(labels):
            mask = labels == value
            n = int(mask.sum())
            name = f"slice:{col}={value}"
            if n < policy.slice_min_size:
                out.append(_check(name, True, None, policy.slice_max_drop,
                                  f"skipped: {n} rows < min size {policy.slice_min_size}", n=n, skipped=True))
                continue
            if m == "roc_auc" and len(np.unique(y[mask])) < 2:
                out.append(_check(name, True, None, policy.slice_max_drop,
                                  f"skipped: a single class in {n} rows", n=n, skipped=True))
                continue
            c = metric_value(y[mask], chall[mask], m)
            b = metric_value(y[mask], champ[mask], m)
            drop = _orient(m, b) - _orient(m, c)
            ok = drop <= policy.slice_max_drop + 1e-12
            out.append(_check(
                name, ok, c, policy.slice_max_drop,
                (f"{m} {_fmt(c)} vs champion {_fmt(b)} on {col}={value} (n={n})" if ok else
                 f"{m} on {col}={value} dropped by {_fmt(drop)} > allowed {policy.slice_max_drop}: "
                 f"{_fmt(c)} vs champion {_fmt(b)} (n={n})"),
                champion=b, drop=drop, n=n, skipped=False,
            ))
    return out


def check_significance(y: np.ndarray, champ: np.ndarray, chall: np.ndarray, policy: Policy) -> dict:
    """Lower bound of the one-sided bootstrap CI of the primary-metric improvement > min_improvement."""
    m = policy.primary_metric
    t0 = time.perf_counter()
    deltas = bootstrap_deltas(y, champ, chall, m, n_boot=policy.n_boot, seed=policy.seed)
    seconds = time.perf_counter() - t0
    valid = deltas[~np.isnan(deltas)]
    point = _orient(m, metric_value(y, chall, m)) - _orient(m, metric_value(y, champ, m))
    lower = float(np.quantile(valid, 1 - policy.confidence)) if len(valid) else float("nan")
    ok = not math.isnan(lower) and lower > policy.min_improvement
    pct = f"{policy.confidence:.0%}"
    return _check(
        f"significance:{m}", ok, point, policy.min_improvement,
        (f"{m} improves by {point:+.4f}; {pct} one-sided lower bound {lower:+.4f} > {policy.min_improvement}"
         if ok else
         f"improvement in {m} not significant: {point:+.4f}, {pct} one-sided lower bound "
         f"{_fmt(lower)} <= {policy.min_improvement} (paired bootstrap, {policy.n_boot} samples)"),
        ci_lower=lower, confidence=policy.confidence, n_boot=policy.n_boot, n_valid=int(len(valid)),
        n=int(len(y)), seconds=round(seconds, 4),
    )


def run_checks(y: np.ndarray, chall: np.ndarray, champ: np.ndarray | None, slices: dict[str, np.ndarray],
               policy: Policy) -> list[dict]:
    """Every check of the policy. Without a champion, only the absolute minimums."""
    y = np.asarray(y)
    chall = np.asarray(chall, dtype=float)
    chall_metrics = metric_set(y, chall, policy.task)
    checks = check_absolute(chall_metrics, policy)
    if champ is None:
        return checks
    champ = np.asarray(champ, dtype=float)
    champ_metrics = metric_set(y, champ, policy.task)
    checks += check_regressions(chall_metrics, champ_metrics, policy)
    checks += check_slices(y, champ, chall, slices, policy)
    checks.append(check_significance(y, champ, chall, policy))
    return checks


def score_pair(rows, spec, challenger, champion=None) -> dict:
    """Labels, both models' scores and metric sets on the same ``rows`` (what the checks read).

    Pure given two fitted pipelines: the gate calls it with registered versions, model CI
    (:mod:`include.model_ci`) with a candidate trained from a code change.
    """
    from include.training.metrics import predict_scores, target_array

    y = target_array(rows, spec, challenger)
    chall = predict_scores(challenger, rows, spec)
    champ = predict_scores(champion, rows, spec) if champion is not None else None
    return {"y": y, "challenger": chall, "champion": champ,
            "challenger_metrics": metric_set(y, chall, spec.task),
            "champion_metrics": metric_set(y, champ, spec.task) if champ is not None else None}


def compare_checks(rows, spec, scored: dict, policy: Policy) -> list[dict]:
    """Every check of ``policy`` on :func:`score_pair`'s output, with the spec's slices of ``rows``."""
    from include.training.metrics import slice_labels

    slices = {col: slice_labels(rows, col) for col in spec.slices if col in rows.columns}
    return run_checks(scored["y"], scored["challenger"], scored["champion"], slices, policy)


def validate_override(override: dict | None) -> dict | None:
    """``{approve: bool, justification: non-empty str, by?: str}`` or None; raises ValueError otherwise."""
    if override is None:
        return None
    if not isinstance(override, dict):
        raise ValueError("override must be a dict {approve: bool, justification: str}")
    if not isinstance(override.get("approve"), bool):
        raise ValueError("override.approve must be true or false")
    just = override.get("justification")
    if not isinstance(just, str) or not just.strip():
        raise ValueError("override.justification is required: say why the gate is overridden")
    by = str(override.get("by") or "").strip() or getpass.getuser()
    return {"approve": override["approve"], "justification": just.strip(), "by": by}


STALE_DATA = "stale data"
INSUFFICIENT_FRESH = "insufficient fresh holdout"


def decide(checks: list[dict], override: dict | None = None,
           blocked: tuple[str, list[str]] | None = None) -> tuple[str, list[str]]:
    """("passed" | "rejected" | a ``blocked`` verdict, reasons): rejected if any check failed;
    ``blocked`` (:data:`STALE_DATA`, :data:`INSUFFICIENT_FRESH`) when the models could not be
    compared fairly at all. An override forces either way."""
    if blocked is not None:
        decision, reasons = blocked[0], list(blocked[1])
    else:
        failed = [c for c in checks if not c["passed"]]
        decision = "rejected" if failed else "passed"
        reasons = [c["reason"] for c in failed] if failed else [f"all {len(checks)} checks passed"]
    override = validate_override(override)
    if override is not None:
        forced = "passed" if override["approve"] else "rejected"
        reasons = [f"override by {override['by']}: {forced} ({override['justification']}); "
                   f"the checks alone gave {decision}", *reasons]
        decision = forced
    return decision, reasons


# ----------------------------------------------------------------------------------------- unseen rows


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


def download_run_artifact(run_id: str, path: str, dst: str):
    """(local path, None), or (None, the error) when the run has no such artifact.

    An unreachable store raises (the task retries); only "not there" is an answer.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from include.tracking import is_unreachable, with_retry

    try:
        return with_retry(mlflow.artifacts.download_artifacts, run_id=run_id, artifact_path=path, dst_path=dst), None
    except (MlflowException, OSError) as err:
        if is_unreachable(err):
            raise
        return None, err


def training_keys(mv, spec, label: str, *, c=None) -> TrainedKeys:
    """What ``mv`` trained on: its run's keys artifact, else its rebuilt split recipe, else unknown."""
    import pandas as pd

    from include.tracking import client, with_retry
    from include.training.model_io import TRAINING_KEYS_ARTIFACT

    c = c or client()
    version = str(mv.version)
    with tempfile.TemporaryDirectory(prefix="gate-keys-") as tmp:
        local, _ = download_run_artifact(mv.run_id, TRAINING_KEYS_ARTIFACT, tmp)
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


# ----------------------------------------------------------------------------------------- records


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def render_markdown(record: dict) -> str:
    lines = [
        f"# Gate decision: {record['model']} v{record['version']} — **{record['decision'].upper()}**",
        "",
        f"- decided at: {record['decided_at']}",
        f"- dataset: {record['dataset']}; holdout: {record['holdout']['n_rows']} rows from {record['holdout']['uri']}",
        *_holdout_lines(record["holdout"]),
        f"- challenger: v{record['challenger']['version']} (run {record['challenger']['run_id']}, "
        f"data rev {record['challenger'].get('data_rev')})",
    ]
    ch = record.get("champion")
    lines.append(f"- champion: v{ch['version']} (run {ch['run_id']}, data rev {ch.get('data_rev')})" if ch
                 else "- champion: none (first model: only absolute minimums apply)")
    lines.append(f"- trigger: `{json.dumps(record.get('trigger') or {}, default=str)}`")
    stale = record.get("stale_data")
    if stale:
        allowed = " (allowed by the run: allow_stale_data)" if stale["relation"] == "older" and stale["allowed"] else ""
        lines.append(f"- data revisions: {stale['relation']}: {stale['detail']}{allowed}")
    if record.get("override"):
        o = record["override"]
        lines.append(f"- override: approve={o['approve']} by {o['by']}: {o['justification']}")
    lines += ["", "## Reasons", "", *[f"- {r}" for r in record["reasons"]], "",
              f"## Metrics on the {record['holdout'].get('n_fresh', record['holdout']['n_rows'])} unseen holdout rows", "", "| metric | challenger | champion |", "|---|---|---|"]
    champ_m = (ch or {}).get("metrics") or {}
    for m, v in record["challenger"]["metrics"].items():
        lines.append(f"| {m} | {_fmt(v)} | {_fmt(champ_m.get(m))} |")
    lines += ["", "## Checks", "", "| check | verdict | value | threshold | detail |", "|---|---|---|---|---|"]
    for c in record["checks"]:
        verdict = "skipped" if c.get("skipped") else ("pass" if c["passed"] else "FAIL")
        val = _fmt(c["value"]) if isinstance(c["value"], float) else c["value"]
        lines.append(f"| {c['name']} | {verdict} | {val} | {c['threshold']} | {c['reason']} |")
    lines += ["", f"Policy ({record['policy']['source']}): `{json.dumps(record['policy'])}`", ""]
    return "\n".join(lines)


def _holdout_lines(h: dict) -> list[str]:
    if "n_fresh" not in h:  # a record written before training rows were excluded
        return []
    lines = [f"- scored on: {h.get('summary') or exclusion_summary(h)} (minimum {h.get('min_fresh')})"]
    lines += [f"  - {e['model']}: {e['n_excluded']} excluded; training keys {e['source']}: {e['detail']}"
              for e in h.get("exclusions", [])]
    lines += [f"  - caution: {n}" for n in h.get("notes", [])]
    return lines


def append_audit(line: dict, path: Path) -> bool:
    """Append one JSON line unless a line with the same ``decision_id`` is there; True if written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            for existing in fh:
                try:
                    if json.loads(existing).get("decision_id") == line["decision_id"]:
                        return False
                except json.JSONDecodeError:
                    continue
            fh.seek(0, 2)
            fh.write(json.dumps(line, sort_keys=True) + "\n")
            fh.flush()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return True


def read_audit(path: Path | None = None) -> list[dict]:
    if path is None:
        from include.config import settings

        path = settings().reports_dir / "audit.jsonl"
    from include.jsonsafe import read_jsonl

    return read_jsonl(path)


# -------------------------------------------------------------------------------------------- gate


def _recorded(mv) -> dict | None:
    tags = mv.tags or {}
    if not tags.get("gate_decision"):
        return None
    try:
        reasons = json.loads(tags.get("gate_reasons", "[]"))
    except json.JSONDecodeError:
        reasons = [tags.get("gate_reasons", "")]
    return {
        "model": mv.name, "version": str(mv.version), "run_id": mv.run_id,
        "decision": tags["gate_decision"], "reasons": reasons, "record_uri": tags.get("gate_report", ""),
        "reused": True,
    }


def evaluate_and_decide(model_name: str, version: str | int, *, dataset: str, trigger: dict | None = None,
                        override: dict | None = None, policies_dir: Path | None = None,
                        allow_stale_data: bool = False) -> dict:
    """Gate ``model_name`` v``version`` against the current champion; record and apply the decision.

    Both are scored on the challenger's holdout minus the rows either trained on. A challenger
    trained on an older data revision than the champion's is :data:`STALE_DATA` unless
    ``allow_stale_data`` (then it is judged like any other, and the record says it was allowed).

    Idempotent: a version that already has a recorded decision returns it (no new audit line, no
    alias change), unless a different ``override`` is given, or ``allow_stale_data`` is given for
    a version recorded as stale. Returns ``{model, version, run_id, decision, reasons, record_uri, reused}``.
    """
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from include.config import settings
    from include.spec import load_spec
    from include.tracking import client, configure_mlflow, with_retry
    from include.training.metrics import compute_threads
    from include.training.model_io import HOLDOUT_ARTIFACT, load_model

    override = validate_override(override)
    trigger = dict(trigger or {})
    t_start = time.perf_counter()
    configure_mlflow()
    c = client()
    version = str(version)
    mv = with_retry(c.get_model_version, model_name, version)
    recorded = _recorded(mv)
    override_tag = json.dumps(override, sort_keys=True) if override else ""
    allow_stale_data = bool(allow_stale_data)
    newly_allowed = allow_stale_data and recorded is not None and recorded["decision"] == STALE_DATA
    if recorded and not newly_allowed and (override is None or (mv.tags or {}).get("gate_override", "") == override_tag):
        log.info("%s v%s already gated: %s", model_name, version, recorded["decision"])
        return recorded

    spec = load_spec(dataset)
    policy = load_policy(dataset, spec.task, policies_dir)
    run = with_retry(c.get_run, mv.run_id)

    try:
        champ_mv = with_retry(c.get_model_version_by_alias, model_name, CHAMPION)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        champ_mv = None
    if champ_mv is not None and str(champ_mv.version) == version:
        champ_mv = None  # gating the champion itself: nothing to compare with

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        local, err = download_run_artifact(mv.run_id, HOLDOUT_ARTIFACT, tmp)
        if local is None:
            raise ValueError(f"{model_name} v{version} (run {mv.run_id}) has no {HOLDOUT_ARTIFACT}: only versions "
                             f"trained by include.training.train.train_and_register can be gated ({err})") from err
        holdout = pd.read_parquet(local)
    compared = [(f"challenger v{version}", mv)]
    stale = None
    if champ_mv is not None:
        compared.append((f"champion v{champ_mv.version}", champ_mv))
        relation, why = data_rev_relation(mv.tags or {}, champ_mv.tags or {})
        stale = {"relation": relation, "detail": why, "allowed": allow_stale_data}
    fresh, exclusion = unseen_rows(holdout, spec, compared, c=c)
    exclusion["min_fresh"] = policy.fresh_minimum(len(holdout)) if champ_mv is not None else 1
    exclusion["uri"] = f"runs:/{mv.run_id}/{HOLDOUT_ARTIFACT}"
    t_keys = time.perf_counter() - t0

    blocked = None
    if stale is not None and stale["relation"] == "older" and not allow_stale_data:
        blocked = (STALE_DATA, [f"stale data: {stale['detail']}, so it would replace newer knowledge with older; "
                                f"not judged (a run may allow it explicitly with allow_stale_data)"])
    elif len(fresh) < exclusion["min_fresh"]:
        blocked = (INSUFFICIENT_FRESH, [f"insufficient fresh holdout: {exclusion_summary(exclusion)}; the policy "
                                        f"needs at least {exclusion['min_fresh']} (min_fresh_holdout)"])

    t0 = time.perf_counter()
    checks: list[dict] = []
    chall_metrics = champ_metrics = None
    champ_run = with_retry(c.get_run, champ_mv.run_id) if champ_mv is not None else None
    with compute_threads():
        challenger = load_model(model_name, version)
        champion = load_model(model_name, champ_mv.version) if champ_mv is not None else None
        if champion is not None and spec.task == "classification" \
                and list(champion.classes_) != list(challenger.classes_):
            raise ValueError(f"champion v{champ_mv.version} classes {list(champion.classes_)} differ from the "
                             f"challenger's {list(challenger.classes_)}; they cannot be compared")
        # a blocked gate still shows what the rows that were left say, for whoever reads the record
        if len(fresh):
            scored = score_pair(fresh, spec, challenger, champion)
            chall_metrics, champ_metrics = scored["challenger_metrics"], scored["champion_metrics"]
        t_score = time.perf_counter() - t0

        t0 = time.perf_counter()
        if blocked is None:
            checks = compare_checks(fresh, spec, scored, policy)
        t_checks = time.perf_counter() - t0
    decision, reasons = decide(checks, override, blocked)
    exclusion["summary"] = exclusion_summary(exclusion)
    if stale is not None and stale["relation"] == "older" and allow_stale_data:
        reasons.insert(0, f"stale data allowed by the run (allow_stale_data): {stale['detail']}")
    reasons += exclusion["notes"]

    def lineage(v, r) -> dict:
        tags = v.tags or {}
        return {"version": str(v.version), "run_id": v.run_id,
                **{k: tags.get(k) for k in ("data_rev", "data_md5", "validation_id", "code_sha", "family",
                                            "run_key", "dag_run_id")},
                "run_name": r.info.run_name}

    decision_id = hashlib.sha256(json.dumps(
        {"model": model_name, "version": version, "champion": str(champ_mv.version) if champ_mv else None,
         "override": override, **({"allow_stale_data": True} if allow_stale_data else {})},
        sort_keys=True).encode()).hexdigest()[:16]
    record_uri = f"runs:/{mv.run_id}/{DECISION_JSON}"
    record = _jsonable({
        "decision_id": decision_id,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model_name,
        "version": version,
        "run_id": mv.run_id,
        "dataset": dataset,
        "decision": decision,
        "reasons": reasons,
        "override": override,
        "allow_stale_data": allow_stale_data,
        "stale_data": stale,
        "trigger": trigger,
        "policy": asdict(policy),
        # n_rows: the challenger's whole holdout; metrics and checks are on the n_fresh rows left
        "holdout": exclusion,
        "challenger": {**lineage(mv, run), "metrics": chall_metrics or {}},
        "champion": ({**lineage(champ_mv, champ_run), "metrics": champ_metrics or {}}
                     if champ_mv is not None else None),
        "checks": checks,
        "timings_s": {"training_keys": round(t_keys, 3), "score": round(t_score, 3), "checks": round(t_checks, 3)},
        "record_uri": record_uri,
    })

    # Order matters for retries: artifacts, audit line (deduplicated), alias, then the tags that
    # mark the decision as recorded.
    with tempfile.TemporaryDirectory(prefix="gate-record-") as tmp:
        d = Path(tmp)
        (d / "decision.json").write_text(json.dumps(record, indent=2, sort_keys=True))
        (d / "decision.md").write_text(render_markdown(record))
        with_retry(c.log_artifact, mv.run_id, str(d / "decision.json"), "gate")
        with_retry(c.log_artifact, mv.run_id, str(d / "decision.md"), "gate")
    from include.metrics_push import gate_outcome
    from include.model_card import log_model_card  # the version's model card (md + html) on its run

    log_model_card(record, c)
    audit = settings().reports_dir / "audit.jsonl"
    append_audit(record, audit)
    gate_outcome(record)
    if decision == "passed":
        with_retry(c.set_registered_model_alias, model_name, CHALLENGER, version)
    elif override is not None and CHALLENGER in (mv.aliases or []):
        with_retry(c.delete_registered_model_alias, model_name, CHALLENGER)  # overridden to reject
    tags = {
        "gate_reasons": json.dumps(reasons)[:_TAG_MAX],
        "gate_report": record_uri,
        "gate_champion_version": str(champ_mv.version) if champ_mv else "none",
        "gate_decision_id": decision_id,
        "gate_fresh_rows": str(exclusion["n_fresh"]),
    }
    if allow_stale_data:
        tags["gate_allow_stale_data"] = "true"
    if override:
        tags["gate_override"] = override_tag[:_TAG_MAX]
    for k, v in tags.items():
        with_retry(c.set_model_version_tag, model_name, version, k, v)
    with_retry(c.set_model_version_tag, model_name, version, "gate_decision", decision)
    with_retry(c.set_tag, mv.run_id, "gate_decision", decision)
    log.info("gate %s v%s vs champion %s: %s in %.2fs (%s)", model_name, version,
             champ_mv.version if champ_mv else "none", decision, time.perf_counter() - t_start, "; ".join(reasons))
    return {"model": model_name, "version": version, "run_id": mv.run_id, "decision": decision,
            "reasons": reasons, "record_uri": record_uri, "reused": False}
