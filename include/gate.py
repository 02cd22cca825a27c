"""Statistical promotion gate: challenger vs champion on the SAME holdout rows, with a decision record.

The checks are pure functions of arrays (labels, champion scores, challenger scores, slice labels),
so they unit-test without MLflow; :func:`evaluate_and_decide` wires them to the registry:

1. the challenger's holdout comes from its own run (``holdout/holdout.parquet``, written at
   training); both the challenger and the current ``champion`` are re-scored on it;
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

from include.training import HIGHER_IS_BETTER, METRICS

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
    source: str = "defaults"


DEFAULT_POLICIES = {
    "classification": Policy(),
    "regression": Policy(
        task="regression", primary_metric="rmse", absolute={"r2": 0.0}, max_regression={"r2": 0.02},
        slice_metric="r2",
    ),
}

_YAML_KEYS = {"primary_metric", "absolute", "max_regression", "slices", "significance"}
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


def decide(checks: list[dict], override: dict | None = None) -> tuple[str, list[str]]:
    """("passed" | "rejected", reasons): rejected if any check failed, unless overridden."""
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
        f"- challenger: v{record['challenger']['version']} (run {record['challenger']['run_id']}, "
        f"data rev {record['challenger'].get('data_rev')})",
    ]
    ch = record.get("champion")
    lines.append(f"- champion: v{ch['version']} (run {ch['run_id']}, data rev {ch.get('data_rev')})" if ch
                 else "- champion: none (first model: only absolute minimums apply)")
    lines.append(f"- trigger: `{json.dumps(record.get('trigger') or {}, default=str)}`")
    if record.get("override"):
        o = record["override"]
        lines.append(f"- override: approve={o['approve']} by {o['by']}: {o['justification']}")
    lines += ["", "## Reasons", "", *[f"- {r}" for r in record["reasons"]], "",
              "## Metrics on the holdout", "", "| metric | challenger | champion |", "|---|---|---|"]
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
    if not Path(path).exists():
        return []
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


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
                        override: dict | None = None, policies_dir: Path | None = None) -> dict:
    """Gate ``model_name`` v``version`` against the current champion; record and apply the decision.

    Idempotent: a version that already has a recorded decision returns it (no new audit line, no
    alias change), unless a different ``override`` is given. Returns
    ``{model, version, run_id, decision, reasons, record_uri, reused}``.
    """
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from include.config import settings
    from include.spec import load_spec
    from include.tracking import client, configure_mlflow, with_retry
    from include.training import (
        HOLDOUT_ARTIFACT,
        compute_threads,
        load_model,
        predict_scores,
        slice_labels,
        target_array,
    )

    override = validate_override(override)
    trigger = dict(trigger or {})
    t_start = time.perf_counter()
    configure_mlflow()
    c = client()
    version = str(version)
    mv = with_retry(c.get_model_version, model_name, version)
    recorded = _recorded(mv)
    override_tag = json.dumps(override, sort_keys=True) if override else ""
    if recorded and (override is None or (mv.tags or {}).get("gate_override", "") == override_tag):
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
        try:
            local = with_retry(mlflow.artifacts.download_artifacts, run_id=mv.run_id,
                               artifact_path=HOLDOUT_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError) as err:
            from include.tracking import is_unreachable

            if is_unreachable(err):
                raise
            raise ValueError(f"{model_name} v{version} (run {mv.run_id}) has no {HOLDOUT_ARTIFACT}: only versions "
                             f"trained by include.training.train_and_register can be gated ({err})") from err
        holdout = pd.read_parquet(local)
    with compute_threads():
        challenger = load_model(model_name, version)
        y = target_array(holdout, spec, challenger)
        chall_scores = predict_scores(challenger, holdout, spec)
        champ_scores = None
        champ_run = None
        if champ_mv is not None:
            champion = load_model(model_name, champ_mv.version)
            if spec.task == "classification" and list(champion.classes_) != list(challenger.classes_):
                raise ValueError(f"champion v{champ_mv.version} classes {list(champion.classes_)} differ from the "
                                 f"challenger's {list(challenger.classes_)}; they cannot be compared")
            champ_scores = predict_scores(champion, holdout, spec)
            champ_run = with_retry(c.get_run, champ_mv.run_id)
        t_score = time.perf_counter() - t0

        slices = {col: slice_labels(holdout, col) for col in spec.slices if col in holdout.columns}
        t0 = time.perf_counter()
        checks = run_checks(y, chall_scores, champ_scores, slices, policy)
        t_checks = time.perf_counter() - t0
    decision, reasons = decide(checks, override)

    def lineage(v, r) -> dict:
        tags = v.tags or {}
        return {"version": str(v.version), "run_id": v.run_id,
                **{k: tags.get(k) for k in ("data_rev", "data_md5", "validation_id", "code_sha", "family",
                                            "run_key", "dag_run_id")},
                "run_name": r.info.run_name}

    decision_id = hashlib.sha256(json.dumps(
        {"model": model_name, "version": version, "champion": str(champ_mv.version) if champ_mv else None,
         "override": override}, sort_keys=True).encode()).hexdigest()[:16]
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
        "trigger": trigger,
        "policy": asdict(policy),
        "holdout": {"uri": f"runs:/{mv.run_id}/{HOLDOUT_ARTIFACT}", "n_rows": len(holdout)},
        "challenger": {**lineage(mv, run), "metrics": metric_set(y, chall_scores, spec.task)},
        "champion": ({**lineage(champ_mv, champ_run), "metrics": metric_set(y, champ_scores, spec.task)}
                     if champ_mv is not None else None),
        "checks": checks,
        "timings_s": {"score": round(t_score, 3), "checks": round(t_checks, 3)},
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
    audit = settings().reports_dir / "audit.jsonl"
    append_audit(record, audit)
    if decision == "passed":
        with_retry(c.set_registered_model_alias, model_name, CHALLENGER, version)
    elif override is not None and CHALLENGER in (mv.aliases or []):
        with_retry(c.delete_registered_model_alias, model_name, CHALLENGER)  # overridden to reject
    tags = {
        "gate_reasons": json.dumps(reasons)[:_TAG_MAX],
        "gate_report": record_uri,
        "gate_champion_version": str(champ_mv.version) if champ_mv else "none",
        "gate_decision_id": decision_id,
    }
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
