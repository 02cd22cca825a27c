"""The retrain policy of a dataset: what counts as drift, how much data a verdict needs, how often it may retrain."""

from __future__ import annotations

import logging
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Literal, get_args

from pydantic import ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from include.config import settings
from include.policy_errors import describe

log = logging.getLogger(__name__)

Correction = Literal["bh", "bonferroni", "none"]
CORRECTIONS = get_args(Correction)


SCALED_FLOOR = 100  # the smallest sample a scaled minimum goes down to


# whole numbers of rows stay whole (YAML's true is not 1); numbers as feature names become text
@dataclass(frozen=True, config=ConfigDict(extra="forbid", coerce_numbers_to_str=True))
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

    sample_size: StrictInt = Field(50_000, ge=1)
    min_sample_size: StrictInt = Field(500, ge=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Correction = "bh"
    numeric_effect_floor: float = Field(0.1, ge=0)
    categorical_effect_floor: float = Field(0.1, ge=0)
    drift_share: float = Field(0.3, gt=0, le=1)
    critical_features: tuple[str, ...] = ()
    cooldown_hours: float = Field(6.0, ge=0)
    max_retrains_per_day: StrictInt = Field(3, ge=0)
    prediction_drift_triggers: StrictBool = False
    quality_floor: dict[str, float] = field(default_factory=dict)
    quality_ceiling: dict[str, float] = field(default_factory=dict)
    min_labeled: StrictInt = 1000
    seed: StrictInt = 0
    # >0: a drift retrain fits on the newest N days only (train's `window_days`), so the new model
    # learns the world that drifted instead of mostly the one before it; 0: all data
    retrain_window_days: float = 0.0
    # keys the policy file set; the others may be scaled to the dataset (see scaled_to)
    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def scaled_to(self, n_reference: int) -> DriftPolicy:
        """Minimum sample sizes the policy file left unset, relative to the reference rows seen."""
        from dataclasses import replace

        changes = {}
        defaults = type(self)()
        for key, share in (("min_sample_size", 0.1), ("min_labeled", 0.2)):
            default = getattr(defaults, key)
            # a value someone chose (in the file, or in code) is kept as it is
            if key not in self.explicit and getattr(self, key) == default:
                changes[key] = int(min(default, max(SCALED_FLOOR, share * n_reference)))
        changes["min_sample_size"] = min(changes.get("min_sample_size", self.min_sample_size), self.sample_size)
        return replace(self, **changes)

    @model_validator(mode="after")
    def _sample_sizes(self) -> DriftPolicy:
        if self.min_sample_size > self.sample_size:
            raise ValueError(f"min_sample_size {self.min_sample_size} exceeds sample_size {self.sample_size}")
        return self

    @classmethod
    def from_dict(cls, raw: dict | None, *, where: str = "drift policy") -> DriftPolicy:
        """The policy a file's mapping sets over the defaults; a ``ValueError`` naming ``where``,
        every wrong key and its value otherwise."""
        raw = dict(raw or {})
        known = sorted(f.name for f in fields(cls) if f.name != "explicit")
        if "explicit" in raw:  # bookkeeping, never set by a file
            raise ValueError(f"{where}: unknown key 'explicit' (known: {known})")
        try:
            return cls(**raw, explicit=frozenset(raw))
        except ValidationError as err:
            raise ValueError(describe(err, where, known=known)) from None

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
