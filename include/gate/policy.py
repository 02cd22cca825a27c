"""The gate's policy: what a challenger must show to pass, per task by default or from
``<policies_dir>/<dataset>.yaml`` (by default ``include/policies/``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, ValidationInfo, model_validator

from include.policy_errors import describe
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

class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Tolerance = Annotated[float, Field(ge=0)]  # an amount of allowed worsening


class _Slices(_FileModel):
    metric: str | None = None
    max_drop: Tolerance | None = None
    min_size: StrictInt | None = Field(None, ge=1)


class _Significance(_FileModel):
    confidence: float | None = Field(None, ge=0.5, lt=1)
    min_improvement: float | None = None
    n_boot: StrictInt | None = Field(None, ge=100)
    seed: StrictInt | None = None


class PolicyFile(_FileModel):
    """The schema of ``<dataset>.yaml`` (see ``include/policies/sessions.yaml``); what it leaves
    out comes from the task's defaults. Metric names must be the task's (validation context)."""

    primary_metric: str | None = None
    absolute: dict[str, float] | None = None
    max_regression: dict[str, Tolerance] | None = None
    slices: _Slices | None = None
    significance: _Significance | None = None
    min_fresh_holdout: StrictInt | None = Field(None, ge=1)  # whole rows; YAML's true is not 1

    @model_validator(mode="after")
    def _task_metrics(self, info: ValidationInfo) -> PolicyFile:
        task = (info.context or {}).get("task", "classification")
        named = [self.primary_metric, (self.slices or _Slices()).metric, *(self.absolute or {}),
                 *(self.max_regression or {})]
        wrong = sorted({m for m in named if m is not None and m not in METRICS[task]})
        if wrong:
            raise ValueError(f"metric(s) {wrong} are not {task} metrics; use one of {list(METRICS[task])}")
        return self

    def overrides(self) -> dict[str, Any]:
        """The :class:`Policy` fields this file sets."""
        slices, sig = self.slices or _Slices(), self.significance or _Significance()
        kw = {"primary_metric": self.primary_metric, "absolute": self.absolute,
              "max_regression": self.max_regression, "min_fresh_holdout": self.min_fresh_holdout,
              "slice_metric": slices.metric, "slice_max_drop": slices.max_drop, "slice_min_size": slices.min_size,
              **sig.model_dump()}
        return {k: v for k, v in kw.items() if v is not None}


def policy_path(dataset: str, policies_dir: Path | None = None) -> Path:
    if policies_dir is None:
        from include.config import settings

        policies_dir = settings().policies_dir
    return Path(policies_dir) / f"{dataset}.yaml"


def parse_policy(raw: dict | None, task: str, *, source: str = "defaults") -> Policy:
    """Policy from a YAML mapping (:class:`PolicyFile`) over the task defaults; a ``ValueError``
    naming ``source``, every wrong key and its value otherwise."""
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"{source}: a policy must be a mapping")
    try:
        parsed = PolicyFile.model_validate(raw or {}, context={"task": task})
    except ValidationError as err:
        raise ValueError(describe(err, source, known={"": PolicyFile.model_fields, "slices": _Slices.model_fields,
                                                      "significance": _Significance.model_fields})) from None
    return replace(DEFAULT_POLICIES[task], source=source, **parsed.overrides())


def load_policy(dataset: str, task: str, policies_dir: Path | None = None) -> Policy:
    """``<policies_dir>/<dataset>.yaml`` if present, else the defaults of ``task``."""
    path = policy_path(dataset, policies_dir)
    if not path.exists():
        return DEFAULT_POLICIES[task]
    import yaml

    return parse_policy(yaml.safe_load(path.read_text()), task, source=str(path))
