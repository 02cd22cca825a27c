"""Retrain or not, and why: a pure function of (result, policy, history, now), unit-tested without a clock."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from include.drift.policy import DriftPolicy
from include.drift.report import DriftResult
from include.jsonsafe import json_safe


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
        return json_safe(asdict(self))


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
