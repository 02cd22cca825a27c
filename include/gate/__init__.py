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
per-task defaults.

Modules: :mod:`.policy`, :mod:`.statistics` (metrics as weighted sums, the paired bootstrap),
:mod:`.checks`, :mod:`.unseen` (training-row exclusion, data revision order), :mod:`.records`
(markdown, audit log), :mod:`.decide` (the verdict and :func:`evaluate_and_decide`'s steps).
Importing the package costs numpy and the standard library (MLflow, pandas and the models load
inside the functions that use them).
"""

from include.gate.checks import (
    check_absolute,
    check_regressions,
    check_significance,
    check_slices,
    compare_checks,
    run_checks,
    score_pair,
)
from include.gate.decide import (
    CHALLENGER,
    CHAMPION,
    DECISION_JSON,
    DECISION_MD,
    INSUFFICIENT_FRESH,
    STALE_DATA,
    decide,
    evaluate_and_decide,
    validate_override,
)
from include.gate.policy import (
    DEFAULT_MIN_FRESH,
    DEFAULT_POLICIES,
    Policy,
    load_policy,
    parse_policy,
    policy_path,
)
from include.gate.records import append_audit, read_audit, recorded_decision, render_markdown
from include.gate.statistics import bootstrap_deltas, metric_set, metric_value, weighted_metric
from include.gate.unseen import (
    TrainedKeys,
    data_rev_relation,
    exclude_trained_rows,
    exclusion_summary,
    training_keys,
    unseen_rows,
)

__all__ = [
    "CHALLENGER", "CHAMPION", "DECISION_JSON", "DECISION_MD", "DEFAULT_MIN_FRESH", "DEFAULT_POLICIES",
    "INSUFFICIENT_FRESH", "STALE_DATA", "Policy", "TrainedKeys", "append_audit", "bootstrap_deltas",
    "check_absolute", "check_regressions", "check_significance", "check_slices", "compare_checks",
    "data_rev_relation", "decide", "evaluate_and_decide", "exclude_trained_rows", "exclusion_summary",
    "load_policy", "metric_set", "metric_value", "parse_policy", "policy_path", "read_audit",
    "recorded_decision", "render_markdown", "run_checks", "score_pair", "training_keys", "unseen_rows",
    "validate_override", "weighted_metric",
]
