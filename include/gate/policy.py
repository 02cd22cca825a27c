"""The gate's policy: what a challenger must show to pass, per task by default or from
``<policies_dir>/<dataset>.yaml`` (by default ``include/policies/``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from include.training.metrics import METRICS


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
    # rows of the challenger's holdout that neither model trained on, needed to compare at all;
    # None: 200, or half the holdout when that is smaller (a small dataset still gets verdicts
    # when nothing is excluded, and not when most of its holdout is)
    min_fresh_holdout: int | None = None
    source: str = "defaults"

    def fresh_minimum(self, holdout_rows: int) -> int:
        if self.min_fresh_holdout is not None:
            return self.min_fresh_holdout
        return max(1, min(DEFAULT_MIN_FRESH, math.ceil(holdout_rows / 2)))


DEFAULT_MIN_FRESH = 200


DEFAULT_POLICIES = {
    "classification": Policy(),
    "regression": Policy(
        task="regression", primary_metric="rmse", absolute={"r2": 0.0}, max_regression={"r2": 0.02},
        slice_metric="r2",
    ),
}

_YAML_KEYS = {"primary_metric", "absolute", "max_regression", "slices", "significance", "min_fresh_holdout"}
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
    if raw.get("min_fresh_holdout") is not None:
        fresh = raw["min_fresh_holdout"]
        if isinstance(fresh, bool) or not isinstance(fresh, int) or fresh < 1:
            raise ValueError(f"{source}: min_fresh_holdout must be a whole number of rows >= 1, got {fresh!r}")
        kw["min_fresh_holdout"] = fresh
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
