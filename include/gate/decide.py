"""The gate's verdict, and :func:`evaluate_and_decide`: one registered version against the champion,
in explicit steps, each a function here::

    load   (versions, policy, the holdout rows neither model trained on, whether the comparison
            is blocked: stale data, too few fresh rows)
    -> score  (both models on those rows)
    -> check  (the policy's checks and the verdict, an override on top)
    -> record (decision record on the run, model card, audit line, alias, then the tags that mark
               the version as gated: a retry that finds them returns the recorded decision)
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.gate.checks import compare_checks, score_pair
from include.gate.policy import Policy, load_policy
from include.gate.records import append_audit, recorded_decision, render_markdown
from include.gate.unseen import data_rev_relation, exclusion_summary, unseen_rows
from include.jsonsafe import json_safe

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
DECISION_JSON = "gate/decision.json"
DECISION_MD = "gate/decision.md"
STALE_DATA = "stale data"
INSUFFICIENT_FRESH = "insufficient fresh holdout"
_TAG_MAX = 4900  # model version tag values are capped at 5000 characters


def validate_override(override: dict | None) -> dict | None:
    """``{approve: bool, justification: non-empty str, by?: str}`` or None; raises ValueError otherwise."""
    if override is None:
        return None
    if not isinstance(override, dict):
        raise ValueError("override must be a dict {approve: bool, justification: str}")
    if not isinstance(override.get("approve"), bool):
        raise ValueError("override.approve must be true or false")
    just = override.get("justification")
    if not isinstance(just, str) or not just.strip():
        raise ValueError("override.justification is required: say why the gate is overridden")
    by = str(override.get("by") or "").strip() or getpass.getuser()
    return {"approve": override["approve"], "justification": just.strip(), "by": by}


def decide(checks: list[dict], override: dict | None = None,
           blocked: tuple[str, list[str]] | None = None) -> tuple[str, list[str]]:
    """("passed" | "rejected" | a ``blocked`` verdict, reasons): rejected if any check failed;
    ``blocked`` (:data:`STALE_DATA`, :data:`INSUFFICIENT_FRESH`) when the models could not be
    compared fairly at all. An override forces either way."""
    if blocked is not None:
        decision, reasons = blocked[0], list(blocked[1])
    else:
        failed = [c for c in checks if not c["passed"]]
        decision = "rejected" if failed else "passed"
        reasons = [c["reason"] for c in failed] if failed else [f"all {len(checks)} checks passed"]
    override = validate_override(override)
    if override is not None:
        forced = "passed" if override["approve"] else "rejected"
        reasons = [f"override by {override['by']}: {forced} ({override['justification']}); "
                   f"the checks alone gave {decision}", *reasons]
        decision = forced
    return decision, reasons


# -------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Comparison:
    """What :func:`load` found: the challenger (and champion, if any) with their runs, the policy,
    the holdout rows neither trained on (``fresh``; ``exclusion`` says how they were chosen), how
    their data revisions relate (``stale``) and the verdict when they cannot be compared fairly."""

    model_name: str
    version: str
    dataset: str
    spec: Any
    policy: Policy
    mv: Any
    run: Any
    champ_mv: Any | None
    champ_run: Any | None
    fresh: Any  # pandas.DataFrame
    exclusion: dict
    stale: dict | None
    blocked: tuple[str, list[str]] | None
    allow_stale_data: bool
    seconds: float  # spent finding what each model trained on


@dataclass(frozen=True)
class Scores:
    """What :func:`score` computed on the fresh rows (None when no row is left)."""

    scored: dict | None
    challenger_metrics: dict | None
    champion_metrics: dict | None
    seconds: float


def already_decided(mv, override: dict | None, allow_stale_data: bool) -> dict | None:
    """The decision recorded on ``mv``, unless this call asks for another one: a different
    ``override``, or ``allow_stale_data`` for a version recorded as stale."""
    recorded = recorded_decision(mv)
    if recorded is None:
        return None
    if allow_stale_data and recorded["decision"] == STALE_DATA:
        return None
    if override is not None and (mv.tags or {}).get("gate_override", "") != _override_tag(override):
        return None
    return recorded


def _override_tag(override: dict | None) -> str:
    return json.dumps(override, sort_keys=True) if override else ""


def load(c, mv, *, dataset: str, policies_dir: Path | None, allow_stale_data: bool) -> Comparison:
    """The comparison to make: spec, policy, champion, the challenger's holdout minus the rows
    either model trained on, and whether the comparison is blocked."""
    import pandas as pd

    from include.spec import load_spec
    from include.tracking import alias_model_version, download_artifact, with_retry
    from include.training.model_io import HOLDOUT_ARTIFACT

    model_name, version = mv.name, str(mv.version)
    spec = load_spec(dataset)
    policy = load_policy(dataset, spec.task, policies_dir)
    run = with_retry(c.get_run, mv.run_id)
    champ_mv = alias_model_version(model_name, CHAMPION, c)
    if champ_mv is not None and str(champ_mv.version) == version:
        champ_mv = None  # gating the champion itself: nothing to compare with

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        local, err = download_artifact(f"runs:/{mv.run_id}/{HOLDOUT_ARTIFACT}", tmp)
        if local is None:
            raise ValueError(f"{model_name} v{version} (run {mv.run_id}) has no {HOLDOUT_ARTIFACT}: only versions "
                             f"trained by include.training.train.train_and_register can be gated ({err})") from err
        holdout = pd.read_parquet(local)
    compared = [(f"challenger v{version}", mv)]
    stale = None
    if champ_mv is not None:
        compared.append((f"champion v{champ_mv.version}", champ_mv))
        relation, why = data_rev_relation(mv.tags or {}, champ_mv.tags or {})
        stale = {"relation": relation, "detail": why, "allowed": allow_stale_data}
    fresh, exclusion = unseen_rows(holdout, spec, compared, c=c)
    exclusion["min_fresh"] = policy.fresh_minimum(len(holdout)) if champ_mv is not None else 1
    exclusion["uri"] = f"runs:/{mv.run_id}/{HOLDOUT_ARTIFACT}"
    seconds = time.perf_counter() - t0

    blocked = None
    if stale is not None and stale["relation"] == "older" and not allow_stale_data:
        blocked = (STALE_DATA, [f"stale data: {stale['detail']}, so it would replace newer knowledge with older; "
                                f"not judged (a run may allow it explicitly with allow_stale_data)"])
    elif len(fresh) < exclusion["min_fresh"]:
        blocked = (INSUFFICIENT_FRESH, [f"insufficient fresh holdout: {exclusion_summary(exclusion)}; the policy "
                                        f"needs at least {exclusion['min_fresh']} (min_fresh_holdout)"])
    champ_run = with_retry(c.get_run, champ_mv.run_id) if champ_mv is not None else None
    return Comparison(model_name, version, dataset, spec, policy, mv, run, champ_mv, champ_run, fresh, exclusion,
                      stale, blocked, allow_stale_data, seconds)


def score(comp: Comparison) -> Scores:
    """Both models scored on the fresh rows. A blocked comparison is scored too: the record shows
    what the rows that were left say, for whoever reads it."""
    from include.training.model_io import load_model

    t0 = time.perf_counter()
    challenger = load_model(comp.model_name, comp.version)
    champion = load_model(comp.model_name, comp.champ_mv.version) if comp.champ_mv is not None else None
    if champion is not None and comp.spec.task == "classification" \
            and list(champion.classes_) != list(challenger.classes_):
        raise ValueError(f"champion v{comp.champ_mv.version} classes {list(champion.classes_)} differ from the "
                         f"challenger's {list(challenger.classes_)}; they cannot be compared")
    if not len(comp.fresh):
        return Scores(None, None, None, time.perf_counter() - t0)
    scored = score_pair(comp.fresh, comp.spec, challenger, champion)
    return Scores(scored, scored["challenger_metrics"], scored["champion_metrics"], time.perf_counter() - t0)


def check(comp: Comparison, scores: Scores, override: dict | None) -> tuple[str, list[str], list[dict], float]:
    """The policy's checks (none when blocked) and the verdict: ``(decision, reasons, checks, seconds)``."""
    t0 = time.perf_counter()
    checks = compare_checks(comp.fresh, comp.spec, scores.scored, comp.policy) if comp.blocked is None else []
    seconds = time.perf_counter() - t0
    decision, reasons = decide(checks, override, comp.blocked)
    comp.exclusion["summary"] = exclusion_summary(comp.exclusion)
    if comp.stale is not None and comp.stale["relation"] == "older" and comp.allow_stale_data:
        reasons.insert(0, f"stale data allowed by the run (allow_stale_data): {comp.stale['detail']}")
    reasons += comp.exclusion["notes"]
    return decision, reasons, checks, seconds


def _lineage(v, r) -> dict:
    tags = v.tags or {}
    return {"version": str(v.version), "run_id": v.run_id,
            **{k: tags.get(k) for k in ("data_rev", "data_md5", "validation_id", "code_sha", "family",
                                        "run_key", "dag_run_id")},
            "run_name": r.info.run_name}


def decision_record(comp: Comparison, scores: Scores, checks: list[dict], decision: str, reasons: list[str], *,
                    trigger: dict, override: dict | None, timings: dict[str, float]) -> dict:
    """The JSON record of the decision (``gate/decision.json``, the audit line, the model card)."""
    champ_mv, mv = comp.champ_mv, comp.mv
    decision_id = hashlib.sha256(json.dumps(
        {"model": comp.model_name, "version": comp.version,
         "champion": str(champ_mv.version) if champ_mv else None,
         "override": override, **({"allow_stale_data": True} if comp.allow_stale_data else {})},
        sort_keys=True).encode()).hexdigest()[:16]
    return json_safe({
        "decision_id": decision_id,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": comp.model_name,
        "version": comp.version,
        "run_id": mv.run_id,
        "dataset": comp.dataset,
        "decision": decision,
        "reasons": reasons,
        "override": override,
        "allow_stale_data": comp.allow_stale_data,
        "stale_data": comp.stale,
        "trigger": trigger,
        "policy": asdict(comp.policy),
        # n_rows: the challenger's whole holdout; metrics and checks are on the n_fresh rows left
        "holdout": comp.exclusion,
        "challenger": {**_lineage(mv, comp.run), "metrics": scores.challenger_metrics or {}},
        "champion": ({**_lineage(champ_mv, comp.champ_run), "metrics": scores.champion_metrics or {}}
                     if champ_mv is not None else None),
        "checks": checks,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "record_uri": f"runs:/{mv.run_id}/{DECISION_JSON}",
    })


def record(c, comp: Comparison, rec: dict, *, override: dict | None) -> None:
    """Apply and record the decision. Order matters for retries: artifacts, audit line
    (deduplicated), alias, then the tags that mark the decision as recorded."""
    from include.metrics_push import gate_outcome
    from include.model_card import log_model_card  # the version's model card (md + html) on its run
    from include.tracking import with_retry

    mv, model_name, version, decision = comp.mv, comp.model_name, comp.version, rec["decision"]
    with tempfile.TemporaryDirectory(prefix="gate-record-") as tmp:
        d = Path(tmp)
        (d / "decision.json").write_text(json.dumps(rec, indent=2, sort_keys=True))
        (d / "decision.md").write_text(render_markdown(rec))
        with_retry(c.log_artifact, mv.run_id, str(d / "decision.json"), "gate")
        with_retry(c.log_artifact, mv.run_id, str(d / "decision.md"), "gate")
    log_model_card(rec, c)
    append_audit(rec)
    gate_outcome(rec)
    if decision == "passed":
        with_retry(c.set_registered_model_alias, model_name, CHALLENGER, version)
    elif override is not None and CHALLENGER in (mv.aliases or []):
        with_retry(c.delete_registered_model_alias, model_name, CHALLENGER)  # overridden to reject
    tags = {
        "gate_reasons": json.dumps(rec["reasons"])[:_TAG_MAX],
        "gate_report": rec["record_uri"],
        "gate_champion_version": str(comp.champ_mv.version) if comp.champ_mv else "none",
        "gate_decision_id": rec["decision_id"],
        "gate_fresh_rows": str(comp.exclusion["n_fresh"]),
    }
    if comp.allow_stale_data:
        tags["gate_allow_stale_data"] = "true"
    if override:
        tags["gate_override"] = _override_tag(override)[:_TAG_MAX]
    for k, v in tags.items():
        with_retry(c.set_model_version_tag, model_name, version, k, v)
    with_retry(c.set_model_version_tag, model_name, version, "gate_decision", decision)
    with_retry(c.set_tag, mv.run_id, "gate_decision", decision)


# --------------------------------------------------------------------------------------------- gate


def evaluate_and_decide(model_name: str, version: str | int, *, dataset: str, trigger: dict | None = None,
                        override: dict | None = None, policies_dir: Path | None = None,
                        allow_stale_data: bool = False) -> dict:
    """Gate ``model_name`` v``version`` against the current champion; record and apply the decision.

    Both are scored on the challenger's holdout minus the rows either trained on. A challenger
    trained on an older data revision than the champion's is :data:`STALE_DATA` unless
    ``allow_stale_data`` (then it is judged like any other, and the record says it was allowed).

    Idempotent: a version that already has a recorded decision returns it (no new audit line, no
    alias change), unless a different ``override`` is given, or ``allow_stale_data`` is given for
    a version recorded as stale. Returns ``{model, version, run_id, decision, reasons, record_uri, reused}``.
    """
    from include.tracking import client, configure_mlflow, with_retry
    from include.training.metrics import compute_threads

    override = validate_override(override)
    t_start = time.perf_counter()
    configure_mlflow()
    c = client()
    mv = with_retry(c.get_model_version, model_name, str(version))
    done = already_decided(mv, override, bool(allow_stale_data))
    if done is not None:
        log.info("%s v%s already gated: %s", model_name, version, done["decision"])
        return done

    comp = load(c, mv, dataset=dataset, policies_dir=policies_dir, allow_stale_data=bool(allow_stale_data))
    with compute_threads():
        scores = score(comp)
        decision, reasons, checks, t_checks = check(comp, scores, override)
    rec = decision_record(comp, scores, checks, decision, reasons, trigger=dict(trigger or {}), override=override,
                          timings={"training_keys": comp.seconds, "score": scores.seconds, "checks": t_checks})
    record(c, comp, rec, override=override)
    log.info("gate %s v%s vs champion %s: %s in %.2fs (%s)", model_name, comp.version,
             comp.champ_mv.version if comp.champ_mv else "none", decision, time.perf_counter() - t_start,
             "; ".join(reasons))
    return {"model": model_name, "version": comp.version, "run_id": mv.run_id, "decision": decision,
            "reasons": reasons, "record_uri": rec["record_uri"], "reused": False}
