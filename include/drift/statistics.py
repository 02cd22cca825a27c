"""Per-feature two-sample tests, the multiple-testing correction and the drifted verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from include.drift.policy import CORRECTIONS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def adjust_pvalues(pvalues: Sequence[float], method: str = "bh") -> list[float]:
    """P-values adjusted for ``len(pvalues)`` tests: Benjamini-Hochberg, Bonferroni or none.

    Compare the result with ``alpha``. BH is scipy's ``false_discovery_control`` (adjusted
    p_(i) = min_{j>=i} p_(j) * m / j, capped at 1); Bonferroni p * m. NaN p-values (untestable features) stay NaN and do not count
    towards m.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    vals = [float(p) for p in pvalues]
    idx = [i for i, p in enumerate(vals) if not math.isnan(p)]
    m = len(idx)
    out = list(vals)
    if m == 0 or method == "none":
        return out
    if method == "bonferroni":
        for i in idx:
            out[i] = min(1.0, vals[i] * m)
        return out
    from scipy.stats import false_discovery_control

    adjusted = false_discovery_control([vals[i] for i in idx], method="bh")
    for i, p in zip(idx, adjusted, strict=True):
        out[i] = float(p)
    return out


@dataclass
class FeatureDrift:
    """Drift of one column: Evidently's effect size, a test p-value and the verdict."""

    column: str
    kind: str  # "numeric" or "categorical" (low-cardinality numerics count as categorical)
    method: str  # Evidently method of ``score``: "wasserstein" (normed) or "jensenshannon"
    score: float  # effect size
    effect_floor: float
    test: str  # "ks" or "chi2"
    p_value: float
    p_adjusted: float = float("nan")
    significant: bool = False
    drifted: bool = False
    n_reference: int = 0
    n_current: int = 0
    note: str = ""


def apply_criteria(features: list[FeatureDrift], *, alpha: float, correction: str) -> list[FeatureDrift]:
    """Fill ``p_adjusted``/``significant``/``drifted`` in place: corrected p <= alpha AND score >= floor."""
    adjusted = adjust_pvalues([f.p_value for f in features], correction)
    for f, p in zip(features, adjusted, strict=True):
        f.p_adjusted = p
        f.significant = bool(not math.isnan(p) and p <= alpha)
        f.drifted = bool(f.significant and not math.isnan(f.score) and f.score >= f.effect_floor)
    return features


def _as_categorical(s: pd.Series) -> pd.Series:
    import numpy as np

    out = s.astype("string")
    return out.astype(object).where(out.notna(), np.nan)


def _p_value(ref: pd.Series, cur: pd.Series, kind: str) -> float:
    import numpy as np
    import pandas as pd
    from scipy import stats

    r, c = ref.dropna(), cur.dropna()
    if len(r) < 2 or len(c) < 2:
        return float("nan")
    if kind == "numeric":
        return float(stats.ks_2samp(r.to_numpy(float), c.to_numpy(float)).pvalue)
    table = pd.concat([r.value_counts(), c.value_counts()], axis=1).fillna(0).to_numpy().T
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table)[1]) if np.all(table.sum(axis=1) > 0) else float("nan")


def _as_numeric(s: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.to_numeric(s, errors="coerce").astype(float)
