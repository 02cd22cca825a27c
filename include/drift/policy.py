"""The retrain policy of a dataset: what counts as drift, how much data a verdict needs, how often it may retrain."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from include.config import settings

log = logging.getLogger(__name__)

CORRECTIONS = ("bh", "bonferroni", "none")


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
