"""The gate's decision record: rendered as ``gate/decision.md`` next to ``gate/decision.json`` on the
challenger's run, appended once to ``<reports_dir>/audit.jsonl``, and read back from a version's tags."""

from __future__ import annotations

import json
from pathlib import Path

from include.gate.checks import fmt
from include.gate.unseen import exclusion_summary


def render_markdown(record: dict) -> str:
    lines = [
        f"# Gate decision: {record['model']} v{record['version']} — **{record['decision'].upper()}**",
        "",
        f"- decided at: {record['decided_at']}",
        f"- dataset: {record['dataset']}; holdout: {record['holdout']['n_rows']} rows from {record['holdout']['uri']}",
        *_holdout_lines(record["holdout"]),
        f"- challenger: v{record['challenger']['version']} (run {record['challenger']['run_id']}, "
        f"data rev {record['challenger'].get('data_rev')})",
    ]
    ch = record.get("champion")
    lines.append(f"- champion: v{ch['version']} (run {ch['run_id']}, data rev {ch.get('data_rev')})" if ch
                 else "- champion: none (first model: only absolute minimums apply)")
    lines.append(f"- trigger: `{json.dumps(record.get('trigger') or {}, default=str)}`")
    stale = record.get("stale_data")
    if stale:
        allowed = " (allowed by the run: allow_stale_data)" if stale["relation"] == "older" and stale["allowed"] else ""
        lines.append(f"- data revisions: {stale['relation']}: {stale['detail']}{allowed}")
    if record.get("override"):
        o = record["override"]
        lines.append(f"- override: approve={o['approve']} by {o['by']}: {o['justification']}")
    lines += ["", "## Reasons", "", *[f"- {r}" for r in record["reasons"]], "",
              f"## Metrics on the {record['holdout'].get('n_fresh', record['holdout']['n_rows'])} unseen holdout rows", "", "| metric | challenger | champion |", "|---|---|---|"]
    champ_m = (ch or {}).get("metrics") or {}
    for m, v in record["challenger"]["metrics"].items():
        lines.append(f"| {m} | {fmt(v)} | {fmt(champ_m.get(m))} |")
    lines += ["", "## Checks", "", "| check | verdict | value | threshold | detail |", "|---|---|---|---|---|"]
    for c in record["checks"]:
        verdict = "skipped" if c.get("skipped") else ("pass" if c["passed"] else "FAIL")
        val = fmt(c["value"]) if isinstance(c["value"], float) else c["value"]
        lines.append(f"| {c['name']} | {verdict} | {val} | {c['threshold']} | {c['reason']} |")
    lines += ["", f"Policy ({record['policy']['source']}): `{json.dumps(record['policy'])}`", ""]
    return "\n".join(lines)


def _holdout_lines(h: dict) -> list[str]:
    if "n_fresh" not in h:  # a record written before training rows were excluded
        return []
    lines = [f"- scored on: {h.get('summary') or exclusion_summary(h)} (minimum {h.get('min_fresh')})"]
    lines += [f"  - {e['model']}: {e['n_excluded']} excluded; training keys {e['source']}: {e['detail']}"
              for e in h.get("exclusions", [])]
    lines += [f"  - caution: {n}" for n in h.get("notes", [])]
    return lines


def append_audit(line: dict, path: Path | None = None) -> bool:
    """Append one JSON line unless a line with the same ``decision_id`` is there; True if written."""
    from include.recordlog import gate_audit_log

    return gate_audit_log(path).append(line)[1]


def read_audit(path: Path | None = None) -> list[dict]:
    from include.recordlog import gate_audit_log

    return gate_audit_log(path).read()


def recorded_decision(mv) -> dict | None:
    tags = mv.tags or {}
    if not tags.get("gate_decision"):
        return None
    try:
        reasons = json.loads(tags.get("gate_reasons", "[]"))
    except json.JSONDecodeError:
        reasons = [tags.get("gate_reasons", "")]
    return {
        "model": mv.name, "version": str(mv.version), "run_id": mv.run_id,
        "decision": tags["gate_decision"], "reasons": reasons, "record_uri": tags.get("gate_report", ""),
        "reused": True,
    }
