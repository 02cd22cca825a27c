"""The gate's statistics on arrays: every metric as a weighted sum (so one call evaluates a whole
batch of bootstrap samples) and the paired bootstrap of challenger - champion."""

from __future__ import annotations

import numpy as np

from include.training.metrics import HIGHER_IS_BETTER, METRICS


def orient(metric: str, value: float) -> float:
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
