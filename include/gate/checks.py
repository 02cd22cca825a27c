"""The gate's checks: pure functions of labels, both models' scores and slice labels, each
returning ``{name, passed, value, threshold, reason, ...}`` records (unit-tested without MLflow)."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from include.gate.policy import Policy
from include.gate.statistics import bootstrap_deltas, metric_set, metric_value, orient
from include.training.metrics import HIGHER_IS_BETTER, predict_scores, slice_labels, target_array


def _check(name: str, passed: bool, value: Any, threshold: Any, reason: str, **extra: Any) -> dict:
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "reason": reason, **extra}


def fmt(x: float) -> str:
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
            f"{m} {fmt(v)} {op} {t}" if ok else f"{m} {fmt(v)} fails the absolute limit {op} {t}",
        ))
    return out


def check_regressions(chall: dict[str, float], champ: dict[str, float], policy: Policy) -> list[dict]:
    """Each ``policy.max_regression`` metric may get worse than the champion's by at most its tolerance."""
    out = []
    for m, tol in policy.max_regression.items():
        c, b = float(chall[m]), float(champ[m])
        worse = orient(m, b) - orient(m, c)  # > 0: the challenger is worse
        ok = worse <= tol + 1e-12
        out.append(_check(
            f"no_regression:{m}", ok, c, tol,
            (f"{m} {fmt(c)} vs champion {fmt(b)} (worse by {fmt(worse)}, allowed {tol})" if ok else
             f"{m} regressed: {fmt(c)} vs champion {fmt(b)}, worse by {fmt(worse)} > allowed {tol}"),
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
            drop = orient(m, b) - orient(m, c)
            ok = drop <= policy.slice_max_drop + 1e-12
            out.append(_check(
                name, ok, c, policy.slice_max_drop,
                (f"{m} {fmt(c)} vs champion {fmt(b)} on {col}={value} (n={n})" if ok else
                 f"{m} on {col}={value} dropped by {fmt(drop)} > allowed {policy.slice_max_drop}: "
                 f"{fmt(c)} vs champion {fmt(b)} (n={n})"),
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
    point = orient(m, metric_value(y, chall, m)) - orient(m, metric_value(y, champ, m))
    lower = float(np.quantile(valid, 1 - policy.confidence)) if len(valid) else float("nan")
    ok = not math.isnan(lower) and lower > policy.min_improvement
    pct = f"{policy.confidence:.0%}"
    return _check(
        f"significance:{m}", ok, point, policy.min_improvement,
        (f"{m} improves by {point:+.4f}; {pct} one-sided lower bound {lower:+.4f} > {policy.min_improvement}"
         if ok else
         f"improvement in {m} not significant: {point:+.4f}, {pct} one-sided lower bound "
         f"{fmt(lower)} <= {policy.min_improvement} (paired bootstrap, {policy.n_boot} samples)"),
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

    y = target_array(rows, spec, challenger)
    chall = predict_scores(challenger, rows, spec)
    champ = predict_scores(champion, rows, spec) if champion is not None else None
    return {"y": y, "challenger": chall, "champion": champ,
            "challenger_metrics": metric_set(y, chall, spec.task),
            "champion_metrics": metric_set(y, champ, spec.task) if champ is not None else None}


def compare_checks(rows, spec, scored: dict, policy: Policy) -> list[dict]:
    """Every check of ``policy`` on :func:`score_pair`'s output, with the spec's slices of ``rows``."""

    slices = {col: slice_labels(rows, col) for col in spec.slices if col in rows.columns}
    return run_checks(scored["y"], scored["challenger"], scored["champion"], slices, policy)
