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
package costs only the standard library, the config and the spec modules.

Modules: :mod:`.policy` (DriftPolicy), :mod:`.sampling`, :mod:`.statistics` (tests, correction),
:mod:`.report` (Evidently, :func:`compute_drift`), :mod:`.labels` (late labels), :mod:`.decision`
(:func:`decide_retrain`), :mod:`.history` (the trigger log), :mod:`.mlflow_log`, :mod:`.check`
(:func:`run_drift_check`, :func:`reference_for_model`).
"""

from include.drift.check import reference_for_model, run_drift_check
from include.drift.decision import Decision, decide_retrain
from include.drift.history import load_trigger_history, record_trigger
from include.drift.labels import LabelJoin, join_labels
from include.drift.mlflow_log import MONITORING_EXPERIMENT, log_to_mlflow
from include.drift.policy import CORRECTIONS, SCALED_FLOOR, DriftPolicy
from include.drift.report import LOW_CARDINALITY, DriftResult, compute_drift
from include.drift.sampling import DEFAULT_BATCH_ROWS, count_rows, parquet_files, sample_for_drift
from include.drift.statistics import FeatureDrift, adjust_pvalues, apply_criteria

__all__ = [
    "CORRECTIONS", "DEFAULT_BATCH_ROWS", "LOW_CARDINALITY", "MONITORING_EXPERIMENT", "SCALED_FLOOR",
    "Decision", "DriftPolicy", "DriftResult", "FeatureDrift", "LabelJoin", "adjust_pvalues",
    "apply_criteria", "compute_drift", "count_rows", "decide_retrain", "join_labels",
    "load_trigger_history", "log_to_mlflow", "parquet_files", "record_trigger", "reference_for_model",
    "run_drift_check", "sample_for_drift",
]
