"""`mlops-ci`: model CI. A code change is trained and gated against the champion before it merges.

    mlops-ci check --dataset sessions [--report report.md] [--reproduce [--repo DIR]]
                   [--family hgb] [--param max_iter=300] [--allow-neutral] [--lock constraints.txt]

From the working tree's code:

1. resolve the dataset's champion (alias ``champion`` of the spec's registered model) and its
   recipe from its lineage tags and run params: data rev, window, seed, split fractions, family,
   hyperparameters (the ones it was fitted with; a search run's chosen ones);
2. load the dataset exactly as of that rev (DVC) and train the working tree's pipeline with that
   recipe (``--family``/``--param`` on top, e.g. to try new hyperparameters) through
   :func:`include.training.train.train_and_register` into a THROW-AWAY MLflow store (a temp SQLite DB +
   artifact dir, deleted afterwards): nothing is registered, aliased or tagged in the real
   registry, and the command checks that before it exits;
3. score both models on the candidate's holdout minus every row either trained on, with the
   promotion gate's own functions (:func:`include.gate.unseen_rows` pieces, :func:`score_pair`,
   :func:`compare_checks`, :func:`decide`): minimums, secondary-metric and slice regressions,
   paired-bootstrap significance;
4. print a Markdown report: metrics side by side, per-slice table, verdict and reasons, what
   changed (code sha vs the champion's; the working tree's lock file vs the full lock the
   champion's training run logged, ``environment/constraints.txt``).

``--reproduce`` retrains the champion's OWN code: its ``code_sha`` checked out in a temporary
``git worktree`` of this project's repository (``--repo``), run in a subprocess on the champion's
rev and recipe into the throw-away store, and compares every metric the champion's run recorded
with the retrain's: an exact match, or "non-determinism" with the metrics that differ and by how much.

Exit status: 0 when the gate would pass the candidate, or when its scores are identical to the
champion's ("no significant change"); 1 when the gate would reject it (or ``--reproduce`` finds
non-determinism); 2 for a usage or setup error (no champion, unknown dataset, missing data rev,
MLflow unreachable).
``--allow-neutral`` also passes a change whose only failed check is significance and that is not
significantly worse either (a refactor that moves scores by noise).

The same environment variables as every stage pick the stores (``MLFLOW_TRACKING_URI``,
``MLOPS_DATA_REPO``, ``MLOPS_DVC_REMOTE``, AWS credentials for S3): embedded or remote, one path.

Modules: :mod:`.recipe` (the champion's recipe), :mod:`.stores` (throw-away store, registry
snapshot, data repo), :mod:`.verdict` (:func:`check`), :mod:`.reproduce` (``--reproduce``),
:mod:`.changes` (code and dependency diffs), :mod:`.report` (Markdown), :mod:`.cli` (``mlops-ci``,
also ``python -m include.model_ci``), :mod:`.errors`. Every name stays importable from
``include.model_ci``; MLflow, DVC and the training code load inside the functions.
"""

from include.model_ci.changes import (
    LOCK_ARTIFACT,
    code_change,
    dependency_diff,
    model_requirements,
    run_lock,
)
from include.model_ci.cli import build_parser, main
from include.model_ci.errors import CiError
from include.model_ci.recipe import Recipe, param_value, recipe_of
from include.model_ci.report import render
from include.model_ci.reproduce import compare_metrics, train_at_commit
from include.model_ci.stores import data_repo, registry_snapshot, scratch_store
from include.model_ci.verdict import NO_CHANGE, CheckResult, check

__all__ = [
    "LOCK_ARTIFACT", "NO_CHANGE", "CheckResult", "CiError", "Recipe", "build_parser", "check", "code_change",
    "compare_metrics", "data_repo", "dependency_diff", "main", "model_requirements", "param_value", "recipe_of",
    "registry_snapshot", "render", "run_lock", "scratch_store", "train_at_commit",
]
