"""The gate's statistics on arrays: the paired bootstrap of challenger - champion, on the metrics of
:mod:`include.training.metrics` (every metric a weighted sum, so one call evaluates a whole batch
of bootstrap samples); ``metric_set`` is training's ``compute_metrics``, the same numbers."""

from __future__ import annotations

import numpy as np

from include.training.metrics import HIGHER_IS_BETTER, metric_value, weighted_metric
from include.training.metrics import compute_metrics as metric_set

__all__ = ["bootstrap_deltas", "metric_set", "metric_value", "orient", "weighted_metric"]


def orient(metric: str, value: float) -> float:
    """Higher is better after orientation."""
    return value if HIGHER_IS_BETTER[metric] else -value


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
