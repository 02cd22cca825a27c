"""The comparison itself: classify the columns, test them, score them with Evidently, save the report."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from include.config import settings
from include.drift.policy import DriftPolicy
from include.drift.sampling import sample_for_drift
from include.drift.statistics import FeatureDrift, _as_categorical, _as_numeric, _p_value, apply_criteria
from include.jsonsafe import json_safe
from include.spec import DatasetSpec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

# Numeric columns with at most this many distinct values (flags, small counts) are compared as
# categories: a KS test and a std-normalised distance make little sense for a 0/1 column.
# Evidently's own auto-selection uses the same cut-off.
LOW_CARDINALITY = 5


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
        return json_safe(d)

    @classmethod
    def skipped(cls, dataset: str, *, n_reference: int, n_current: int, policy: DriftPolicy) -> DriftResult:
        return cls(dataset=dataset, features=[], n_reference=n_reference, n_current=n_current,
                   n_reference_total=n_reference, n_current_total=n_current, alpha=policy.alpha,
                   correction=policy.correction, computed=False)


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
