"""Progressive-delivery policy of one dataset's model: canary, automated analysis, rollback window.

Read from ``<policies_dir>/deploy_<dataset>.yaml`` (``include/policies/`` by default); every key is
optional and takes the default below. A deploy run may override keys for itself with the
``policy`` Param (same shape), e.g. ``{"canary": {"weight": 0.5, "max_seconds": 20}}``; an
installation may override keys for every dataset with ``MLOPS_DEPLOY_POLICY`` (JSON, same shape;
e.g. a staging stack without canaries: ``{"canary": {"weight": 0}}``). Precedence: Param, then
``MLOPS_DEPLOY_POLICY``, then the file, then the defaults.

The defaults suit a model that answers at least a few requests a second; a model with little
traffic needs a longer ``max_seconds`` (or ``on_insufficient_traffic: rollback`` to refuse
promoting what was never tried).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Canary(_Strict):
    # share of the model's traffic the new version gets while it is judged; 0 = no canary (switch at once)
    weight: float = Field(0.1, ge=0.0, lt=1.0)
    # judge once the canary has answered this many requests, but never before min_seconds ...
    min_requests: int = Field(200, ge=1)
    min_seconds: float = Field(10.0, ge=0.0)
    # ... and at the latest after max_seconds, with whatever traffic came
    max_seconds: float = Field(300.0, gt=0.0)
    # what to do when max_seconds passed with fewer than min_requests canary requests
    on_insufficient_traffic: Literal["promote", "rollback"] = "promote"


class Analysis(_Strict):
    # 5xx share of the canary's scoring requests (4xx are the client's fault and not counted)
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    # canary p99 latency may be at most this many times the champion's, once above p99_floor_ms
    # (ratios of sub-millisecond latencies are noise). Both are estimated from the servers'
    # latency histograms (interpolated in a bucket), and a fresh server answers its first requests
    # slower: below 3x is not a signal on a busy machine
    max_p99_ratio: float = Field(3.0, gt=0.0)
    p99_floor_ms: float = Field(50.0, ge=0.0)
    # distribution of the scores served by the canary vs the champion over the same window: the
    # two-sample Kolmogorov-Smirnov statistic above this fails (an effect size, so big samples do
    # not fail on trivial shifts); judged only with at least score_min_rows rows per side. Unset
    # (the default): reported, not judged, because a retrained model is *meant* to score
    # differently (a retrain after concept drift measured KS 0.56 against its champion on the
    # same traffic). Set it when the new version should behave like the champion: a hotfix, a
    # dependency bump, a re-packaging, a version deployed by hand around the gate.
    max_score_ks: float | None = Field(None, gt=0.0, le=1.0)
    score_min_rows: int = Field(100, ge=10)


class RollbackWindow(_Strict):
    # after promotion the new champion is watched this long, the old one kept warm behind it
    seconds: float = Field(60.0, ge=0.0)
    # consecutive failed /ready checks (0.5 s apart) that roll back at once
    max_failed_health_checks: int = Field(3, ge=1)
    # 5xx share of scoring requests in the window that rolls back (with at least min_requests)
    max_error_rate: float = Field(0.05, ge=0.0, le=1.0)
    min_requests: int = Field(20, ge=1)


class DeployPolicy(_Strict):
    canary: Canary = Canary()
    analysis: Analysis = Analysis()
    rollback_window: RollbackWindow = RollbackWindow()


def policy_path(dataset: str, policies_dir: Path | None = None) -> Path:
    if policies_dir is None:
        from include.config import settings

        policies_dir = settings().policies_dir
    return Path(policies_dir) / f"deploy_{dataset}.yaml"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in (over or {}).items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def load_policy(dataset: str, overrides: dict | None = None, policies_dir: Path | None = None) -> DeployPolicy:
    """The dataset's deploy policy (file, else defaults) with this run's ``overrides`` on top.

    A malformed file or override is a ``ValueError`` naming the file and the key: no retry fixes it.
    """
    import yaml

    path = policy_path(dataset, policies_dir)
    raw = {}
    if path.exists():
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a deploy policy must be a mapping, got {type(raw).__name__}")
    if overrides is not None and not isinstance(overrides, dict):
        raise ValueError(f"the deploy policy override must be an object, got {overrides!r}")
    env = os.environ.get("MLOPS_DEPLOY_POLICY", "").strip()
    try:
        installation = json.loads(env) if env else {}
    except ValueError as err:
        raise ValueError(f"MLOPS_DEPLOY_POLICY is not JSON: {err}") from None
    if not isinstance(installation, dict):
        raise ValueError(f"MLOPS_DEPLOY_POLICY must be a JSON object, got {env!r}")
    source = " + ".join([str(path) if path.exists() else "the default deploy policy",
                         *(["MLOPS_DEPLOY_POLICY"] if installation else []),
                         *(["the run's policy Param"] if overrides else [])])
    try:
        return DeployPolicy.model_validate(_merge(_merge(raw, installation), overrides or {}))
    except ValidationError as err:
        from include.policy_errors import describe

        sections = {"": DeployPolicy.model_fields, "canary": Canary.model_fields, "analysis": Analysis.model_fields,
                    "rollback_window": RollbackWindow.model_fields}
        raise ValueError(describe(err, source, known=sections)) from None
