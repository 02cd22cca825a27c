"""Stage 4: drift monitoring that closes the loop (prediction-log window vs the champion's data).

One check, :func:`run_drift_check`, does::

    sample both sides (seeded, chunked) -> per-feature effect size (Evidently) + p-value (scipy)
    -> multiple-testing correction + effect-size floor -> drifted features
    -> Evidently HTML/JSON report -> MLflow "monitoring" run -> retrain policy -> triggers.jsonl

How a feature counts as drifted (both must hold):

* **Significant**: a two-sample test (Kolmogorov-Smirnov for numeric columns, chi-square on the
  category counts for categorical and low-cardinality numeric ones) whose p-value, corrected for
  the number of features tested (Benjamini-Hochberg by default, Bonferroni on request), is at most
  ``alpha``. With ~10-20 features tested every few hours, uncorrected tests at 0.05 would flag
  about one innocent feature per check.
* **Large enough to matter**: Evidently's effect size is at least a floor: the Wasserstein
  distance normalised by the reference std (numeric) or the Jensen-Shannon distance (categorical),
  both 0.1 by default (Evidently's own defaults for >1000 rows). On big samples every difference
  is "significant" (the KS test at 50k vs 50k rejects for a CDF gap of 0.009), so without the
  floor harmless wobbles would retrain the model; on small samples the floor alone is noisy and the
  test guards against chance. Above a few hundred rows the floor is the binding condition: a JS
  distance of 0.1 already means a chi-square of about 0.08 x n, i.e. p < 1e-6 at n = 500.

Why a floor and FDR rather than FWER: the retrain criterion is the *share* of drifted features, so
controlling the expected share of false flags (BH) is the matching guarantee; Bonferroni (any false
flag) is stricter and can be chosen in the policy when a single critical feature triggers retrains.

The retrain policy (:class:`DriftPolicy`, ``include/policies/drift_<dataset>.yaml``) never judges
below ``min_sample_size`` rows, retrains when the share of drifted features reaches ``drift_share``
or a critical feature drifted (or, opt-in, prediction drift or a quality floor is crossed), and
protects against retrain storms: no trigger inside ``cooldown_hours`` of the previous one and at
most ``max_retrains_per_day`` in any rolling 24 h. Every decision, including suppressed ones, is
appended to ``<reports_dir>/drift/triggers.jsonl``. The decision is a pure function of
(result, policy, history, now), so it is unit-tested without Airflow or a clock.

Heavy imports (pandas, numpy, scipy, evidently, mlflow) happen inside the functions: importing this
module costs only the standard library, the config and the spec modules.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.config import settings
from include.spec import DatasetSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

MONITORING_EXPERIMENT = "monitoring"
CORRECTIONS = ("bh", "bonferroni", "none")
# Numeric columns with at most this many distinct values (flags, small counts) are compared as
# categories: a KS test and a std-normalised distance make little sense for a 0/1 column.
# Evidently's own auto-selection uses the same cut-off.
LOW_CARDINALITY = 5
DEFAULT_BATCH_ROWS = 131_072


# ------------------------------------------------------------------------------------- policy


SCALED_FLOOR = 100  # the smallest sample a scaled minimum goes down to


@dataclass(frozen=True)
class DriftPolicy:
    """When a drift check may judge, what counts as drift, and how often it may retrain.

    Defaults (and why):

    * ``sample_size=50_000`` rows per side: the tests keep their power for any shift that matters
      (see :func:`sample_for_drift`) while a check stays a few seconds on 1M+ row windows.
    * ``min_sample_size=500``: below it only shifts of about 0.2 std or more are reliably
      detected (KS critical distance at 500 vs 50k rows is 0.061); a quiet night should not make
      a judgement either way. When the policy file does not set it, it scales with the data the
      champion was trained on: 10% of the reference rows, at least ``SCALED_FLOOR`` (100: KS
      critical distance 0.14, i.e. only large shifts are called), at most 500; so a dataset of a
      few hundred rows still gets verdicts. ``min_labeled`` scales the same way (20%, 100..1000).
    * ``alpha=0.05`` with ``correction="bh"``; effect floors 0.1 (Evidently's defaults).
    * ``drift_share=0.3``: a third of the inputs moved is a different population; fewer moved
      features trigger only when they are listed as ``critical_features``.
    * ``cooldown_hours=6``, ``max_retrains_per_day=3``: a retrain plus deploy takes well under an
      hour here, and the window after it still holds traffic scored by the old model; a drift that
      persists re-triggers after the cooldown, a flapping one cannot start more than 3 runs a day.
    * ``prediction_drift_triggers=False``: prediction drift is reported, but reference scores come
      from the champion on its own data, so by itself it is a symptom, not a trigger.
    * ``quality_floor`` / ``quality_ceiling`` (empty = off): with late labels joined, retrain when
      e.g. ``roc_auc`` falls below a floor or ``log_loss`` rises above a ceiling, once at least
      ``min_labeled`` labelled rows exist. This is what catches concept drift, which leaves the
      inputs unchanged.
    """

    sample_size: int = 50_000
    min_sample_size: int = 500
    alpha: float = 0.05
    correction: str = "bh"
    numeric_effect_floor: float = 0.1
    categorical_effect_floor: float = 0.1
    drift_share: float = 0.3
    critical_features: tuple[str, ...] = ()
    cooldown_hours: float = 6.0
    max_retrains_per_day: int = 3
    prediction_drift_triggers: bool = False
    quality_floor: dict[str, float] = field(default_factory=dict)
    quality_ceiling: dict[str, float] = field(default_factory=dict)
    min_labeled: int = 1000
    seed: int = 0
    # >0: a drift retrain fits on the newest N days only (train's `window_days`), so the new model
    # learns the world that drifted instead of mostly the one before it; 0: all data
    retrain_window_days: float = 0.0
    # keys the policy file set; the others may be scaled to the dataset (see scaled_to)
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def scaled_to(self, n_reference: int) -> DriftPolicy:
        """Minimum sample sizes the policy file left unset, relative to the reference rows seen."""
        from dataclasses import replace

        changes = {}
        for key, share in (("min_sample_size", 0.1), ("min_labeled", 0.2)):
            default = next(f.default for f in fields(self) if f.name == key)
            # a value someone chose (in the file, or in code) is kept as it is
            if key not in self.explicit and getattr(self, key) == default:
                changes[key] = int(min(default, max(SCALED_FLOOR, share * n_reference)))
        changes["min_sample_size"] = min(changes.get("min_sample_size", self.min_sample_size), self.sample_size)
        return replace(self, **changes)

    def __post_init__(self) -> None:
        problems = []
        if self.correction not in CORRECTIONS:
            problems.append(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 < self.drift_share <= 1:
            problems.append(f"drift_share must be in (0, 1], got {self.drift_share}")
        if self.sample_size < 1 or self.min_sample_size < 1:
            problems.append("sample_size and min_sample_size must be positive")
        if self.min_sample_size > self.sample_size:
            problems.append(f"min_sample_size {self.min_sample_size} exceeds sample_size {self.sample_size}")
        if self.cooldown_hours < 0 or self.max_retrains_per_day < 0:
            problems.append("cooldown_hours and max_retrains_per_day must be >= 0")
        if self.numeric_effect_floor < 0 or self.categorical_effect_floor < 0:
            problems.append("effect floors must be >= 0")
        if problems:
            raise ValueError("invalid drift policy: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, raw: dict | None, *, where: str = "drift policy") -> DriftPolicy:
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        if "critical_features" in raw:
            raw["critical_features"] = tuple(str(c) for c in raw["critical_features"] or ())
        for k in ("quality_floor", "quality_ceiling"):
            if k in raw:
                raw[k] = {str(m): float(v) for m, v in (raw[k] or {}).items()}
        try:
            return cls(**raw, explicit=frozenset(raw))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from err

    @classmethod
    def load(cls, dataset: str, policies_dir: Path | None = None) -> DriftPolicy:
        """``<policies_dir>/drift_<dataset>.yaml`` (defaults when the file does not exist)."""
        import yaml

        path = Path(policies_dir or settings().policies_dir) / f"drift_{dataset}.yaml"
        if not path.exists():
            log.info("no drift policy at %s: using the defaults", path)
            return cls()
        raw = yaml.safe_load(path.read_text()) or {}
        if "drift" in raw and isinstance(raw["drift"], dict):
            raw = raw["drift"]
        return cls.from_dict(raw, where=str(path))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("explicit")
        d["critical_features"] = list(self.critical_features)
        return d


def load_policy(dataset: str, policies_dir: Path | None = None) -> DriftPolicy:
    return DriftPolicy.load(dataset, policies_dir)


# ----------------------------------------------------------------------------------- sampling


def parquet_files(paths: Any) -> list[Path]:
    """Parquet files of file/dir path(s), sorted; hidden (``.``/``_``) files, e.g. temp files, skipped."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[Path] = []
    for p in map(Path, items):
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*.parquet"))
                       if not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


def _is_paths(data: Any) -> bool:
    if isinstance(data, str | Path):
        return True
    return isinstance(data, list | tuple) and bool(data) and all(isinstance(x, str | Path) for x in data)


def _iter_chunks(data: Any, columns: Sequence[str] | None, batch_rows: int) -> Iterator[Any]:
    """Yield pandas frames or pyarrow record batches; iterables are consumed lazily."""
    import pandas as pd

    cols = list(columns) if columns is not None else None
    if isinstance(data, pd.DataFrame):
        frame = data if cols is None else data[cols]
        for start in range(0, len(frame), batch_rows):
            yield frame.iloc[start:start + batch_rows]
        return
    if _is_paths(data):
        import pyarrow.parquet as pq

        for p in parquet_files(data):
            yield from pq.ParquetFile(p).iter_batches(batch_size=batch_rows, columns=cols)
        return
    for chunk in data:  # DataFrames, pyarrow RecordBatches/Tables (e.g. a filtered dataset scan)
        if isinstance(chunk, pd.DataFrame):
            yield chunk if cols is None else chunk[cols]
        elif hasattr(chunk, "to_batches"):  # pyarrow Table
            yield from (b if cols is None else b.select(cols) for b in chunk.to_batches(batch_rows))
        elif hasattr(chunk, "num_rows"):  # pyarrow RecordBatch
            yield chunk if cols is None else chunk.select(cols)
        else:
            raise TypeError(f"expected DataFrames, Arrow batches or parquet paths; got {type(chunk).__name__}")


def sample_for_drift(
    data: Any,
    n: int,
    seed: int = 0,
    *,
    columns: Sequence[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> pd.DataFrame:
    """A seeded uniform sample (without replacement) of at most ``n`` rows, in the input's order.

    ``data``: a DataFrame, an iterable of DataFrames or Arrow record batches (chunks, consumed
    lazily), or parquet file/dir path(s). Chunks and parquet row batches are streamed, so memory is bounded by ``2n + batch_rows`` rows whatever
    the window size (1M+ rows never sit in memory at once).

    Algorithm (bottom-k / priority sampling): every row gets a key ``U(0,1)`` from
    ``default_rng(seed)``; the ``n`` rows with the smallest keys are kept. That is a simple random
    sample, mergeable chunk by chunk: only rows whose key beats the current ``n``-th smallest are
    kept as candidates (about ``n * (1 + ln(N / n))`` of N rows), compacted to ``n`` whenever ``2n``
    pile up; parquet rows stay in Arrow and only the final ``n`` are converted to pandas. The keys
    are drawn in row order, so a frame and the same rows in chunks (or in parquet files) give the
    identical sample. Memory: at most ``2n + batch_rows`` rows.

    Why sampling does not change the verdict. The two-sample KS test rejects (alpha = 0.05) when
    the CDFs differ by more than ``1.36 * sqrt((n + m) / (n * m))``: 0.0086 at 50k vs 50k, 0.0074
    at 50k vs 100k, 0.0061 with 1M vs 100k. A shift of 0.1 std, the smallest we call drift,
    moves a normal CDF by ~0.04, five times the 50k critical distance, so the power stays ~1 on
    the sample as on the full data; the gain from 1M rows is sensitivity to shifts nobody acts on.
    The effect sizes that decide (Wasserstein/std, Jensen-Shannon, floor 0.1) are estimated on 50k
    rows with a sampling error of about 0.005-0.01, so only features within ~0.01 of the floor
    can flip between sample and full data. Evidently itself switches from p-value tests to these
    distances above 1000 reference rows because on large samples p-values flag nearly everything.
    """
    import numpy as np
    import pandas as pd

    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if isinstance(data, pd.DataFrame) and len(data) <= n:
        out = data if columns is None else data[list(columns)]
        return out.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    parts: list = []  # candidate rows in arrival order (pandas frames or pyarrow tables)
    part_keys: list = []
    pending, threshold, arrow = 0, np.inf, False

    def compact() -> None:
        nonlocal pending, threshold
        keys = np.concatenate(part_keys)
        if arrow:
            import pyarrow as pa

            table = pa.concat_tables(parts, promote_options="default")
        else:
            table = pd.concat(parts, ignore_index=True)
        if len(keys) > n:
            sel = np.sort(np.argpartition(keys, n - 1)[:n])  # sorted: keeps arrival order
            table = table.take(sel) if arrow else table.iloc[sel].reset_index(drop=True)
            keys = keys[sel]
            threshold = keys.max()
        parts[:], part_keys[:] = [table], [keys]
        pending = len(keys)

    for chunk in _iter_chunks(data, columns, batch_rows):
        arrow = hasattr(chunk, "num_rows")
        rows = chunk.num_rows if arrow else len(chunk)
        if rows == 0:
            continue
        keys = rng.random(rows)  # drawn for every row, so chunking does not change the sample
        idx = np.flatnonzero(keys < threshold)
        if len(idx) == 0:
            continue
        if arrow:  # stays in Arrow: only the final n rows are ever converted to pandas
            import pyarrow as pa

            parts.append(pa.Table.from_batches([chunk.take(pa.array(idx))]))
        else:
            parts.append(chunk.iloc[idx])
        part_keys.append(keys[idx])
        pending += len(idx)
        if pending >= 2 * n:
            compact()
    if not parts:
        if isinstance(data, pd.DataFrame):
            return data.iloc[0:0].reset_index(drop=True)
        return pd.DataFrame(columns=list(columns or []))
    compact()
    out = parts[0]
    return out.to_pandas() if arrow else out


def count_rows(data: Any) -> int:
    """Rows of a DataFrame or of parquet path(s) (from the footers, without reading data)."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return len(data)
    if not _is_paths(data):
        raise TypeError(f"count_rows takes a DataFrame or parquet path(s), got {type(data).__name__}")
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(data))


# --------------------------------------------------------------------------- statistics


def adjust_pvalues(pvalues: Sequence[float], method: str = "bh") -> list[float]:
    """P-values adjusted for ``len(pvalues)`` tests: Benjamini-Hochberg, Bonferroni or none.

    Compare the result with ``alpha``. BH adjusted p_(i) = min_{j>=i} p_(j) * m / j (monotone,
    capped at 1); Bonferroni p * m. NaN p-values (untestable features) stay NaN and do not count
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
    order = sorted(idx, key=lambda i: vals[i])
    running = 1.0
    for rank in range(m, 0, -1):  # step-up from the largest p-value
        i = order[rank - 1]
        running = min(running, vals[i] * m / rank)
        out[i] = min(1.0, running)
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


# ----------------------------------------------------------------------------------- result


@dataclass
class DriftResult:
    dataset: str
    features: list[FeatureDrift]
    n_reference: int  # rows compared (after sampling)
    n_current: int
    n_reference_total: int  # rows before sampling
    n_current_total: int
    alpha: float
    correction: str
    prediction: FeatureDrift | None = None
    quality: dict | None = None  # from join_labels: {n_labeled, coverage, metrics}
    report_html: str | None = None
    report_json: str | None = None
    computed: bool = True  # False when skipped (too few rows): features is empty

    @property
    def drifted_features(self) -> list[str]:
        return [f.column for f in self.features if f.drifted]

    @property
    def share_drifted(self) -> float:
        tested = [f for f in self.features if not math.isnan(f.p_value)]
        return len(self.drifted_features) / len(tested) if tested else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["drifted_features"] = self.drifted_features
        d["share_drifted"] = self.share_drifted
        return _jsonable(d)

    @classmethod
    def skipped(cls, dataset: str, *, n_reference: int, n_current: int, policy: DriftPolicy) -> DriftResult:
        return cls(dataset=dataset, features=[], n_reference=n_reference, n_current=n_current,
                   n_reference_total=n_reference, n_current_total=n_current, alpha=policy.alpha,
                   correction=policy.correction, computed=False)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if hasattr(x, "item") and not isinstance(x, str | bytes):  # numpy scalars
        return _jsonable(x.item())
    if isinstance(x, dt.datetime):
        return x.isoformat()
    return x


def _classify(spec: DatasetSpec, reference: pd.DataFrame, current: pd.DataFrame,
              prediction_col: str | None) -> dict[str, str]:
    """column -> "numeric" | "categorical_numeric" (<= LOW_CARDINALITY values) | "categorical"."""
    import pandas as pd

    features = [c.name for c in spec.feature_columns]
    missing = [c for c in features if c not in reference.columns or c not in current.columns]
    if missing:
        where = {c: ("reference" if c not in reference.columns else "current") for c in missing}
        raise ValueError(f"feature column(s) missing, cannot judge drift: {where}")
    cols = list(features)
    if prediction_col and prediction_col in reference.columns and prediction_col in current.columns:
        cols.append(prediction_col)
    elif prediction_col:
        log.info("prediction column %r is not in both frames: no prediction drift", prediction_col)
    kinds = {}
    categorical = set(spec.categorical_features)
    numeric_spec = set(spec.numeric_features)
    for c in cols:
        # the spec decides (a numeric column logged as strings or all-null objects is still
        # numeric); the prediction column is numeric when the reference holds numbers
        numeric = c in numeric_spec or (c not in categorical and pd.api.types.is_numeric_dtype(reference[c]))
        if numeric:
            both = pd.concat([_as_numeric(reference[c]), _as_numeric(current[c])])
            kinds[c] = "numeric" if both.dropna().nunique() > LOW_CARDINALITY else "categorical_numeric"
        else:
            kinds[c] = "categorical"
    return kinds


def _as_numeric(s: pd.Series) -> pd.Series:
    import pandas as pd

    return pd.to_numeric(s, errors="coerce").astype(float)


def _default_out_dir(dataset: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return settings().reports_dir / "drift" / dataset / stamp


def compute_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    spec: DatasetSpec,
    *,
    prediction_col: str | None = None,
    policy: DriftPolicy | None = None,
    out_dir: Path | None = None,
) -> DriftResult:
    """Per-feature drift of ``current`` against ``reference`` with Evidently + scipy; saves the report.

    Frames longer than ``policy.sample_size`` are sampled first (:func:`sample_for_drift`). The
    Evidently report holds one ``ValueDrift`` per column (score + distribution plots). It leaves
    out ``DriftedColumnsCount`` and ``DataDriftPreset``'s summary widgets: each recomputes every
    column's drift once more (the preset is 3x slower for the same numbers), and the share that
    counts is ours (significance + floor), logged with the result. ``prediction_col``, when present in
    both frames, is judged the same way but reported apart from the features. Writes
    ``drift_report.html`` and ``drift_report.json`` (Evidently) and ``drift_result.json`` (ours)
    into ``out_dir`` (default ``<reports_dir>/drift/<dataset>/<utc stamp>``).
    """
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    policy = policy or DriftPolicy()
    n_ref_total, n_cur_total = len(reference), len(current)
    kinds = _classify(spec, reference, current, prediction_col)
    cols = list(kinds)
    reference = sample_for_drift(reference, policy.sample_size, policy.seed, columns=cols)
    current = sample_for_drift(current, policy.sample_size, policy.seed + 1, columns=cols)

    ref, cur = pd.DataFrame(index=reference.index), pd.DataFrame(index=current.index)
    for c, kind in kinds.items():
        convert = _as_categorical if kind == "categorical" else _as_numeric
        ref[c], cur[c] = convert(reference[c]), convert(current[c])

    results: dict[str, FeatureDrift] = {}
    evaluable = []
    for c, full_kind in kinds.items():
        # low-cardinality numerics (flags, small counts) are compared as categories: KS and a
        # std-normalised distance make little sense on a 0/1 column
        kind = "numeric" if full_kind == "numeric" else "categorical"
        method = "wasserstein" if kind == "numeric" else "jensenshannon"
        floor = policy.numeric_effect_floor if kind == "numeric" else policy.categorical_effect_floor
        nr, nc = int(ref[c].notna().sum()), int(cur[c].notna().sum())
        f = FeatureDrift(column=c, kind=kind, method=method, score=float("nan"), effect_floor=floor,
                         test="ks" if kind == "numeric" else "chi2", p_value=float("nan"),
                         n_reference=nr, n_current=nc)
        if nr < 2 or nc < 2:
            f.note = "fewer than 2 non-null values on one side: not tested"
            log.warning("drift: column %s has %d/%d non-null values; not tested", c, nr, nc)
        else:
            f.p_value = _p_value(ref[c], cur[c], kind)
            evaluable.append(c)
        results[c] = f

    # Evidently's column type follows the spec; low-cardinality numerics keep the numerical type
    # with the Jensen-Shannon method (as Evidently's own auto-selection does).
    numeric_cols = [c for c in evaluable if kinds[c] != "categorical"]
    cat_cols = [c for c in evaluable if kinds[c] == "categorical"]
    definition = DataDefinition(numerical_columns=numeric_cols, categorical_columns=cat_cols)
    metrics = [ValueDrift(column=c, method=results[c].method, threshold=results[c].effect_floor)
               for c in evaluable]
    out_dir = Path(out_dir) if out_dir else _default_out_dir(spec.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = out_dir / "drift_report.html", out_dir / "drift_report.json"
    if metrics:
        snapshot = Report(metrics).run(
            Dataset.from_pandas(cur[evaluable], data_definition=definition),
            Dataset.from_pandas(ref[evaluable], data_definition=definition),
        )
        for m in snapshot.dict()["metrics"]:
            conf = m.get("config", {})
            if conf.get("type", "").endswith(":ValueDrift"):
                results[conf["column"]].score = float(m["value"])
        snapshot.save_html(str(html_path))
        snapshot.save_json(str(json_path))
    feature_results = [results[c] for c in cols if c != prediction_col]
    apply_criteria(feature_results, alpha=policy.alpha, correction=policy.correction)
    prediction = None
    if prediction_col in results:
        prediction = apply_criteria([results[prediction_col]], alpha=policy.alpha, correction="none")[0]
    result = DriftResult(
        dataset=spec.name, features=feature_results, prediction=prediction,
        n_reference=len(ref), n_current=len(cur), n_reference_total=n_ref_total,
        n_current_total=n_cur_total, alpha=policy.alpha, correction=policy.correction,
        report_html=str(html_path) if metrics else None, report_json=str(json_path) if metrics else None,
    )
    (out_dir / "drift_result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    log.info("drift %s: %d/%d features drifted %s (n_ref=%d of %d, n_cur=%d of %d)", spec.name,
             len(result.drifted_features), len(feature_results), result.drifted_features,
             result.n_reference, n_ref_total, result.n_current, n_cur_total)
    return result


# --------------------------------------------------------------------------- late labels


@dataclass
class LabelJoin:
    joined: pd.DataFrame  # predictions with the label column, one row per key
    n_predictions: int
    n_labeled: int
    coverage: float
    metrics: dict[str, float]

    def summary(self) -> dict:
        return _jsonable({"n_predictions": self.n_predictions, "n_labeled": self.n_labeled,
                          "coverage": self.coverage, "metrics": self.metrics})


def join_labels(
    predictions_df: pd.DataFrame,
    labeled_df: pd.DataFrame,
    key: str,
    *,
    target: str | None = None,
    prediction_col: str = "prediction",
    task: str = "classification",
    ts_col: str = "ts",
) -> LabelJoin:
    """Join late ground truth onto logged predictions by ``key`` and score the model on them.

    Only predictions that carry the key can be joined (``n_predictions`` counts those); duplicates
    keep the last prediction (by ``ts_col`` when present) and the last label. Metrics
    are :func:`include.training.compute_metrics` (the ones the gate uses: roc_auc, accuracy, f1,
    log_loss; or rmse, mae, r2), empty when no row has a label. ``prediction_col`` holds
    P(positive) for classification, as the serving API logs it.
    """
    import pandas as pd

    if target is None:
        others = [c for c in labeled_df.columns if c != key]
        if len(others) != 1:
            raise ValueError(f"pass target=: labeled_df has columns {list(labeled_df.columns)}")
        target = others[0]
    for frame, name, need in ((predictions_df, "predictions_df", (key, prediction_col)),
                              (labeled_df, "labeled_df", (key, target))):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}")
    preds = predictions_df[predictions_df[key].notna()]  # clients may not send the key
    if ts_col in preds.columns:
        preds = preds.sort_values(ts_col, kind="mergesort")
    preds = preds.drop_duplicates(subset=[key], keep="last")
    labels = labeled_df[[key, target]].dropna(subset=[target]).drop_duplicates(subset=[key], keep="last")
    label_name = target if target not in preds.columns else f"{target}__label"
    labels = labels.rename(columns={target: label_name})
    joined = preds.merge(labels, on=key, how="inner", validate="one_to_one")
    joined = joined[pd.to_numeric(joined[prediction_col], errors="coerce").notna()]
    metrics: dict[str, float] = {}
    if len(joined):
        from include.training import compute_metrics

        metrics = compute_metrics(joined[label_name].to_numpy(), joined[prediction_col].to_numpy(float), task)
    n_pred = len(preds)
    return LabelJoin(joined=joined.reset_index(drop=True), n_predictions=n_pred, n_labeled=len(joined),
                     coverage=len(joined) / n_pred if n_pred else 0.0, metrics=metrics)


# ------------------------------------------------------------------------------ decisions


@dataclass
class Decision:
    retrain: bool
    reason: str  # human-readable, starts with the code
    drifted_features: list[str]
    code: str  # insufficient_sample | no_drift | drift | quality (labels only) | cooldown | daily_cap
    drift_detected: bool = False  # True also when the retrain was suppressed by cooldown/cap
    judged: bool = True
    at: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def _utc(t: dt.datetime | str) -> dt.datetime:
    if isinstance(t, str):
        t = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


def _history_triggers(history: Iterable[dict | dt.datetime | str], model_name: str | None) -> list[dt.datetime]:
    """Times of past decisions that did trigger a retrain (datetimes count as triggers)."""
    out = []
    for h in history or ():
        if isinstance(h, dict):
            if not h.get("retrain"):
                continue
            if model_name and h.get("model_name") not in (None, model_name):
                continue
            out.append(_utc(h["at"]))
        else:
            out.append(_utc(h))
    return sorted(out)


def decide_retrain(
    result: DriftResult,
    policy: DriftPolicy,
    history: Iterable[dict | dt.datetime | str],
    *,
    now: dt.datetime,
    model_name: str | None = None,
    last_retrain_at: dt.datetime | None = None,
) -> Decision:
    """Retrain or not, and why; deterministic in (result, policy, history, now).

    ``history``: previous decisions (``load_trigger_history`` entries; only those with
    ``retrain: true`` count) or plain trigger timestamps. ``last_retrain_at`` (e.g. the serving
    version's creation time) starts a cooldown too, so a model just retrained for another reason
    is not retrained again on a window its predecessor mostly scored. Order of checks: enough
    rows -> drift -> cooldown -> daily cap (rolling 24 h). Triggers later than ``now`` (a backfill
    or a skewed clock) count as inside the window: storms are stopped, not explained.
    """
    now = _utc(now)
    at = now.isoformat()
    min_n = policy.min_sample_size
    if result.n_current_total < min_n or result.n_reference_total < min_n or not result.computed:
        return Decision(
            retrain=False, code="insufficient_sample", judged=False, drifted_features=[], at=at,
            reason=(f"insufficient_sample: {result.n_current_total} current and "
                    f"{result.n_reference_total} reference rows; need {min_n} on each side"),
        )
    drifted = result.drifted_features
    triggers: list[str] = []
    share = result.share_drifted
    if drifted and share >= policy.drift_share:
        triggers.append(f"{len(drifted)}/{len(result.features)} features drifted "
                        f"(share {share:.2f} >= {policy.drift_share})")
    critical = [c for c in policy.critical_features if c in drifted]
    if critical:
        triggers.append(f"critical feature(s) drifted: {', '.join(critical)}")
    if policy.prediction_drift_triggers and result.prediction is not None and result.prediction.drifted:
        triggers.append(f"prediction drift (score {result.prediction.score:.3f})")
    drifted_trigger = bool(triggers)  # inputs or predictions moved (vs. only the label quality)
    quality = (result.quality or {})
    if quality.get("n_labeled", 0) >= policy.min_labeled:
        qm = quality.get("metrics") or {}
        for m, floor in policy.quality_floor.items():
            v = qm.get(m)
            if v is not None and not math.isnan(v) and v < floor:
                triggers.append(f"{m} {v:.4f} < floor {floor}")
        for m, ceiling in policy.quality_ceiling.items():
            v = qm.get(m)
            if v is not None and not math.isnan(v) and v > ceiling:
                triggers.append(f"{m} {v:.4f} > ceiling {ceiling}")
    details = {"share_drifted": share, "drift_share": policy.drift_share, "critical_drifted": critical}
    if not triggers:
        return Decision(retrain=False, code="no_drift", drifted_features=drifted, at=at, details=details,
                        reason=(f"no_drift: {len(drifted)}/{len(result.features)} features drifted "
                                f"(share {share:.2f} < {policy.drift_share}), no critical feature"))
    why = "; ".join(triggers)
    past = _history_triggers(history, model_name)
    starts = past + ([_utc(last_retrain_at)] if last_retrain_at else [])
    cooldown = dt.timedelta(hours=policy.cooldown_hours)
    recent = [t for t in starts if t > now - cooldown]
    if recent:
        last = max(recent)
        free_at = last + cooldown
        details.update(last_trigger=last.isoformat(), cooldown_until=free_at.isoformat())
        return Decision(retrain=False, code="cooldown", drift_detected=True, drifted_features=drifted,
                        at=at, details=details,
                        reason=(f"cooldown: {why}; but the last retrain started {last.isoformat()}, "
                                f"inside the {policy.cooldown_hours:g} h cooldown (until {free_at.isoformat()})"))
    day = [t for t in past if t > now - dt.timedelta(hours=24)]
    if len(day) >= policy.max_retrains_per_day:
        details.update(retrains_last_24h=len(day))
        return Decision(retrain=False, code="daily_cap", drift_detected=True, drifted_features=drifted,
                        at=at, details=details,
                        reason=(f"daily_cap: {why}; but {len(day)} retrains were triggered in the last 24 h "
                                f"(max {policy.max_retrains_per_day})"))
    code = "drift" if drifted_trigger else "quality"
    return Decision(retrain=True, code=code, drift_detected=True, drifted_features=drifted, at=at,
                    details=details, reason=f"{code}: {why}")


# --------------------------------------------------------------------------- trigger log


def triggers_path() -> Path:
    return settings().reports_dir / "drift" / "triggers.jsonl"


def load_trigger_history(*, model_name: str | None = None, path: Path | None = None) -> list[dict]:
    """Every recorded decision (oldest first), optionally of one model; a torn last line is skipped."""
    path = Path(path or triggers_path())
    if not path.exists():
        return []
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d is not JSON (interrupted write?); skipped", path, n)
            continue
        if model_name is None or entry.get("model_name") == model_name:
            entries.append(entry)
    return entries


def record_trigger(
    decision: Decision,
    *,
    model_name: str,
    model_version: str | int,
    dataset: str,
    run_key: str | None = None,
    summary: dict | None = None,
    path: Path | None = None,
) -> dict:
    """Append the decision (retrain or skipped, with its reason) to the JSONL log; once per run_key.

    A retried task with the same ``run_key`` gets the entry written by the first attempt back
    and nothing is appended. Appends are serialised with a file lock (several checks may run).
    """
    path = Path(path or triggers_path())
    with _trigger_lock(path):
        return _append_entry(path, decision, model_name=model_name, model_version=model_version,
                             dataset=dataset, run_key=run_key, summary=summary)


def _trigger_lock(path: Path):
    """The lock that serialises decide + record on one trigger log (read-decide-append is atomic)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=600)


def _append_entry(path: Path, decision: Decision, *, model_name: str, model_version: str | int, dataset: str,
                  run_key: str | None, summary: dict | None) -> dict:
    if run_key:
        for old in load_trigger_history(path=path):
            if old.get("run_key") == run_key and old.get("model_name") == model_name:
                return old
    entry = _jsonable({
        "at": decision.at, "dataset": dataset, "model_name": model_name, "model_version": str(model_version),
        "run_key": run_key, "retrain": decision.retrain, "code": decision.code, "reason": decision.reason,
        "drift_detected": decision.drift_detected, "drifted_features": list(decision.drifted_features),
        "summary": summary,
    })
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
    return entry


# ------------------------------------------------------------------------------- MLflow


def _metric_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", s)[:250]


def log_to_mlflow(
    result: DriftResult,
    model_name: str,
    model_version: str | int,
    *,
    decision: Decision | None = None,
    run_key: str | None = None,
) -> str:
    """One run in the "monitoring" experiment for this check; returns its run id.

    Logs share/count of drifted features, per-feature scores and adjusted p-values, prediction
    drift and label quality as metrics, the Evidently HTML/JSON and our result JSON as artifacts
    (``drift_report/``), and tags the run with the model name/version and the decision. Sets
    ``last_drift_run_id`` (and the share) on the model version. With a ``run_key`` a retry finds
    the run of the first attempt (tag ``drift.run_key``) instead of logging a second one.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from include.tracking import client, configure_mlflow, with_retry

    experiment_id = configure_mlflow(MONITORING_EXPERIMENT)
    c = client()
    version = str(model_version)
    if run_key and "'" in run_key:
        raise ValueError(f"run_key {run_key!r} must not contain quotes")
    if run_key:
        found = with_retry(c.search_runs, [experiment_id],
                           filter_string=f"tags.`drift.run_key` = '{run_key}' and attributes.status = 'FINISHED'",
                           max_results=1)
        if found:
            log.info("monitoring run for run_key %s exists: %s", run_key, found[0].info.run_id)
            return found[0].info.run_id
    tags = {
        "model_name": model_name, "model_version": version, "dataset": result.dataset,
        "monitoring.kind": "drift", "drift.model_uri": f"models:/{model_name}/{version}",
        "drift.drifted_features": ",".join(result.drifted_features)[:5000],
        "mlflow.runName": f"drift-{model_name}-v{version}",
    }
    if run_key:
        tags["drift.run_key"] = run_key
    if decision is not None:
        tags.update({"drift.retrain": str(decision.retrain).lower(), "drift.decision": decision.code,
                     "drift.reason": decision.reason[:5000]})
    metrics = {
        "share_drifted": result.share_drifted, "n_drifted": float(len(result.drifted_features)),
        "n_features": float(len(result.features)), "n_reference": float(result.n_reference),
        "n_current": float(result.n_current), "n_current_total": float(result.n_current_total),
        "n_reference_total": float(result.n_reference_total),
    }
    for f in result.features:
        metrics[_metric_name(f"drift_score.{f.column}")] = f.score
        metrics[_metric_name(f"drift_p_adj.{f.column}")] = f.p_adjusted
    if result.prediction is not None:
        metrics["prediction_drift_score"] = result.prediction.score
        metrics["prediction_drift_p"] = result.prediction.p_adjusted
    for m, v in ((result.quality or {}).get("metrics") or {}).items():
        metrics[_metric_name(f"quality.{m}")] = v
    if result.quality:
        metrics["quality.n_labeled"] = float(result.quality.get("n_labeled", 0))
    metrics = {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(float(v))}

    def _log() -> str:
        with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
            mlflow.log_params({"alpha": result.alpha, "correction": result.correction,
                               "sample_reference": result.n_reference, "sample_current": result.n_current})
            mlflow.log_metrics(metrics)
            for p in (result.report_html, result.report_json):
                if p and Path(p).exists():
                    mlflow.log_artifact(p, "drift_report")
            mlflow.log_dict(result.to_dict(), "drift_report/drift_result.json")
            if decision is not None:
                mlflow.log_dict(decision.to_dict(), "drift_report/decision.json")
            return run.info.run_id

    run_id = with_retry(_log)
    try:
        for k, v in (("last_drift_run_id", run_id), ("last_drift_share", f"{result.share_drifted:.4f}"),
                     ("last_drift_retrain", str(decision.retrain).lower() if decision else "")):
            with_retry(c.set_model_version_tag, model_name, version, k, v)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        log.warning("model %s version %s is not in the registry: not tagged with last_drift_run_id",
                    model_name, version)
    return run_id


# -------------------------------------------------------------------------- orchestration


def _safe_dir_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:120]


def run_drift_check(
    *,
    dataset: str,
    model_name: str,
    model_version: str | int,
    reference_df: Any,
    current_df: Any,
    policy: DriftPolicy | None = None,
    now: dt.datetime,
    run_key: str | None = None,
    spec: DatasetSpec | None = None,
    prediction_col: str | None = "prediction",
    labeled_df: pd.DataFrame | None = None,
    last_retrain_at: dt.datetime | None = None,
    log_mlflow: bool = True,
    record: bool = True,
    triggers_file: Path | None = None,
) -> dict:
    """One drift check: sample, compare, report, log, decide, record. Returns a small JSON-able dict.

    ``reference_df``: the champion's data (a DataFrame, e.g. :func:`reference_for_model`).
    ``current_df``: the prediction-log window, a DataFrame or parquet path(s) (streamed and
    sampled, never loaded whole). ``labeled_df`` (key + target), when given with a DataFrame
    window, adds model quality from late labels. ``run_key`` (e.g. the Airflow run id) makes the
    check idempotent: a retry with the same key returns the recorded summary and changes nothing.

    Summary keys: dataset, model_name, model_version, run_key, at, n_reference, n_current,
    n_reference_total, n_current_total, share_drifted, drifted_features, prediction_drift,
    quality, decision {retrain, code, reason, drifted_features, ...}, report_path, report_uri,
    mlflow_run_id, train_conf (the conf for the ``train`` DAG when retrain, else None).
    """
    from include.spec import load_spec

    now = _utc(now)
    spec = spec or load_spec(dataset)
    policy = policy or DriftPolicy.load(dataset)
    if run_key and not re.fullmatch(r"[A-Za-z0-9_.:+@/ -]+", run_key):
        raise ValueError(f"run_key {run_key!r} may only hold letters, digits and _.:+@/- (it goes into "
                         "an MLflow filter and a directory name)")
    replay = _replayed(load_trigger_history(model_name=model_name, path=triggers_file), run_key)
    if replay is not None:  # a retry: nothing is computed, logged or recorded again
        return replay

    n_ref_total, n_cur_total = count_rows(reference_df), count_rows(current_df)
    policy = policy.scaled_to(n_ref_total)
    out_dir = (settings().reports_dir / "drift" / dataset / f"{_safe_dir_name(model_name)}-v{model_version}"
               / (_safe_dir_name(run_key) if run_key else now.strftime("%Y%m%dT%H%M%SZ")))
    if min(n_ref_total, n_cur_total) < policy.min_sample_size:
        result = DriftResult.skipped(dataset, n_reference=n_ref_total, n_current=n_cur_total, policy=policy)
    else:
        cur = current_df
        if not _is_frame(current_df):  # stream parquet: sample before anything is in memory
            cur = sample_for_drift(current_df, policy.sample_size, policy.seed + 1)
        result = compute_drift(reference_df, cur, spec, prediction_col=prediction_col, policy=policy,
                               out_dir=out_dir)
        result.n_current_total = n_cur_total
        if labeled_df is not None and _is_frame(current_df) and spec.key in current_df.columns \
                and prediction_col and prediction_col in current_df.columns:
            result.quality = join_labels(current_df, labeled_df, spec.key, target=spec.target,
                                         prediction_col=prediction_col, task=spec.task).summary()
    path = Path(triggers_file or triggers_path())
    # Decide and record atomically: two checks running at once must not both see "no recent
    # trigger" and both retrain. The expensive part (sampling, Evidently) ran above, unlocked.
    with _trigger_lock(path):
        history = load_trigger_history(model_name=model_name, path=path)
        replay = _replayed(history, run_key)
        if replay is not None:
            return replay
        decision = decide_retrain(result, policy, history, now=now, model_name=model_name,
                                  last_retrain_at=last_retrain_at)
        run_id = None
        report_uri = Path(result.report_html).resolve().as_uri() if result.report_html else None
        if log_mlflow and result.computed:
            run_id = log_to_mlflow(result, model_name, model_version, decision=decision, run_key=run_key)
            if result.report_html:
                report_uri = f"runs:/{run_id}/drift_report/drift_report.html"
        summary = _jsonable({
            "dataset": dataset, "model_name": model_name, "model_version": str(model_version),
            "run_key": run_key, "at": now.isoformat(),
            "n_reference": result.n_reference, "n_current": result.n_current,
            "n_reference_total": n_ref_total, "n_current_total": n_cur_total,
            "share_drifted": result.share_drifted, "drifted_features": result.drifted_features,
            "prediction_drift": ({"score": result.prediction.score, "drifted": result.prediction.drifted}
                                 if result.prediction else None),
            "quality": result.quality,
            "decision": decision.to_dict(),
            "report_path": result.report_html, "report_uri": report_uri, "mlflow_run_id": run_id,
            "train_conf": ({"reason": "drift", "trigger": decision.code,
                            "drifted_features": decision.drifted_features,
                            "report_uri": report_uri, "monitoring_run_id": run_id,
                            "model_version": str(model_version),
                            **({"window_days": policy.retrain_window_days} if policy.retrain_window_days else {}),
                            } if decision.retrain else None),
        })
        if record:
            _append_entry(path, decision, model_name=model_name, model_version=model_version,
                          dataset=dataset, run_key=run_key, summary=summary)
    log.info("drift check %s v%s: %s", model_name, model_version, decision.reason)
    return summary


def _replayed(history: list[dict], run_key: str | None) -> dict | None:
    if not run_key:
        return None
    for entry in history:
        if entry.get("run_key") == run_key and entry.get("summary"):
            log.info("drift check %s already decided (%s): returning the recorded summary",
                     run_key, entry.get("code"))
            return {**entry["summary"], "replayed": True}
    return None


def _is_frame(x: Any) -> bool:
    import pandas as pd

    return isinstance(x, pd.DataFrame)


def reference_for_model(
    model_name: str,
    model_version: str | int,
    *,
    spec: DatasetSpec | None = None,
    prediction_col: str | None = "prediction",
) -> pd.DataFrame:
    """The data a registered version was trained on (its ``dataset``/``data_rev`` tags, via DVC).

    With ``prediction_col``, the version's scores are added for the rows it did not train on
    (its val + test split, rebuilt with the run's seed and fractions) and NaN elsewhere: in-sample
    scores are sharper than anything the model produces in serving, so comparing the prediction
    log with them would report prediction drift on day one.
    """
    import numpy as np
    import pandas as pd

    from include.spec import load_spec
    from include.tracking import client, with_retry
    from include.versioning import DataRepo

    c = client()
    mv = with_retry(c.get_model_version, model_name, str(model_version))
    dataset, rev = mv.tags.get("dataset"), mv.tags.get("data_rev")
    if not dataset or not rev or rev == "unknown":
        raise ValueError(f"{model_name} v{model_version} has no dataset/data_rev tags: cannot find its data")
    spec = spec or load_spec(dataset)
    df = DataRepo().load(dataset, rev, spec)
    if not prediction_col:
        return df
    from include.training import load_model, predict_scores, split

    params = with_retry(c.get_run, mv.run_id).data.params
    _, val, test = split(df, spec, seed=int(params.get("seed", 42)),
                         holdout_frac=float(params.get("holdout_frac", 0.2)),
                         val_frac=float(params.get("val_frac", 0.2)))
    held = pd.concat([val, test], ignore_index=True)
    model = load_model(model_name, str(model_version))
    scores = dict(zip(held[spec.key], predict_scores(model, held, spec), strict=True))
    df[prediction_col] = df[spec.key].map(scores).astype(float) if scores else np.nan
    return df
