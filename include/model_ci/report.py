"""The Markdown report of a check: verdict, metrics side by side, slices, gate checks, what changed
(code, dependency lock, model pins) and, with ``--reproduce``, the reproducibility of the champion."""

from __future__ import annotations

import json
import math
from typing import Any

from include.model_ci.changes import LOCK_ARTIFACT
from include.model_ci.verdict import NO_CHANGE, CheckResult


def _f(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def render(r: CheckResult) -> str:
    from include.training.metrics import HIGHER_IS_BETTER

    badge = {"passed": "PASSED", NO_CHANGE: "NO SIGNIFICANT CHANGE"}.get(r.verdict, r.verdict.upper())
    cand = r.candidate
    lines = [
        f"# Model CI: `{r.dataset}` — **{badge}**", "",
        f"- champion: `{r.model}` v{r.champion_version}, trained as {r.recipe.describe()}",
        f"- candidate: this working tree's pipeline, {cand['family']} {json.dumps(cand['params'], sort_keys=True)}, "
        f"same data rev and seed, trained in a throw-away MLflow store (nothing registered)",
        f"- holdout: {r.holdout['n_fresh']} of {r.holdout['n_rows']} candidate holdout rows unseen by both models "
        f"(excluded {r.holdout['n_excluded']}; minimum {r.holdout['min_fresh']})",
        f"- gate policy: {r.policy_source}", "",
        "## Verdict", "", *[f"- {x}" for x in r.reasons],
    ]
    if r.verdict != r.gate_decision:
        lines.append(f"- the promotion gate alone: {r.gate_decision}")
    sig = next((c for c in r.checks if c["name"].startswith("significance:")), None)
    if sig is not None and r.worse is not None:
        upper = -r.worse["ci_lower"]
        lines.append(f"- {sig['name'].split(':', 1)[1]} change {sig['value']:+.4f}, one-sided {sig['confidence']:.0%} "
                     f"bounds [{sig['ci_lower']:+.4f}, {upper:+.4f}] (paired bootstrap, {sig['n_boot']} samples)"
                     + ("; significantly worse" if r.worse["passed"] else ""))
    lines += ["", "## Metrics", "", "| metric | champion | candidate | change |", "|---|---|---|---|"]
    for m, v in r.metrics["candidate"].items():
        b = r.metrics["champion"].get(m)
        delta = v - b if b is not None else None
        arrow = "" if not delta else (" ▲" if (delta > 0) == HIGHER_IS_BETTER[m] else " ▼")
        lines.append(f"| {m} | {_f(b)} | {_f(v)} | {'–' if delta is None else f'{delta:+.4f}'}{arrow} |")
    slices = [c for c in r.checks if c["name"].startswith("slice:")]
    if slices:
        lines += ["", "## Slices", "", "| slice | rows | champion | candidate | drop | verdict |", "|---|---|---|---|---|---|"]
        for c in slices:
            verdict = "skipped" if c.get("skipped") else ("pass" if c["passed"] else "**FAIL**")
            lines.append(f"| {c['name'][6:]} | {c.get('n')} | {_f(c.get('champion'))} | {_f(c['value'])} | "
                         f"{_f(c.get('drop'))} | {verdict} |")
    if r.checks:
        lines += ["", "## Gate checks", "", "| check | verdict | detail |", "|---|---|---|"]
        for c in r.checks:
            verdict = "skipped" if c.get("skipped") else ("pass" if c["passed"] else "**FAIL**")
            lines.append(f"| {c['name']} | {verdict} | {c['reason']} |")
    code = r.code
    dirty = " + uncommitted changes" if code["dirty"] else ""
    lines += ["", "## What changed", "",
              f"- code: `{code['candidate'][:12]}`{dirty} vs the champion's `{code['champion'][:12]}`"
              + (" (same commit)" if code["candidate"] == code["champion"] and not code["dirty"] else "")]
    if code["files"]:
        shown = code["files"][:30]
        lines.append(f"- files changed since the champion's commit ({len(code['files'])}): "
                     + ", ".join(f"`{x}`" for x in shown) + (" …" if len(code["files"]) > 30 else ""))
    elif code["note"]:
        lines.append(f"- {code['note']}")
    d = r.deps
    lc = d.get("lock_changes")
    if lc is not None:
        lines.append(f"- dependency lock: {d['lock_path']} ({d['n_locked']} packages) vs the lock the champion's "
                     f"run logged ({d['n_champion_locked']}): "
                     + (f"{len(lc)} package(s) changed" if lc else "no locked package changed"))
        if lc:
            lines += ["", "| package | champion's lock | working tree's lock |", "|---|---|---|"]
            lines += [f"| {x['package']} | {x['champion'] or '(absent)'} | {x['candidate'] or '(removed)'} |"
                      for x in lc]
            lines.append("")
    elif not d["lock"]:
        lines.append(f"- dependency lock: the working tree has no {d['lock_path']}, so no lock diff is possible")
    else:
        lines.append(f"- dependency lock: the champion's run logged no lock ({LOCK_ARTIFACT}; trained before "
                     "model CI recorded it), only its model's own pins are compared below")
    if not d["recorded"]:
        lines.append("- model requirements: the champion recorded none")
    else:
        changed = [x for x in d["rows"] if x["changed"]]
        lines.append("- model requirements (the model's own pins): "
                     + ("none changed" if not changed else
                        "changed: " + ", ".join(f"{x['package']} {x['champion']} → {x['candidate']}" for x in changed)))
        lines += ["", "| package | champion | candidate | lock |", "|---|---|---|---|"]
        lines += [f"| {x['package']} | {x['champion'] or '–'} | {x['candidate'] or '–'} | {x['lock'] or '–'} |"
                  for x in d["rows"]]
    if r.reproduce is not None:
        rp = r.reproduce
        lines += ["", "## Reproducibility", ""]
        who = f"the champion's own code (`{rp['code_sha'][:12]}`, a temporary git worktree)"
        if rp["ok"]:
            lines.append(f"- retraining the champion's recipe with {who} reproduced all {rp['n_compared']} of its "
                         f"recorded metrics exactly")
        else:
            lines.append(f"- **non-determinism**: retraining the champion's recipe with {who}, {len(rp['differ'])} "
                         f"of its {rp['n_compared']} recorded metrics differ, the largest: "
                         + ", ".join(f"{x['metric']} by {x['delta']:+.3g}" for x in
                                     sorted(rp["differ"], key=lambda x: -abs(x["delta"]))[:5])
                         + (" …" if len(rp["differ"]) > 5 else ""))
        if rp["champion_dirty"]:
            lines.append("  - caution: the champion was trained from a checkout with uncommitted changes, which "
                         "its commit does not hold; they may explain a difference")
        if not rp["ok"]:
            lines += ["", "| metric | recorded | reproduced | delta |", "|---|---|---|---|"]
            lines += [f"| {x['metric']} | {x['recorded']!r} | {x['reproduced']!r} | {x['delta']:+.3g} |"
                      for x in rp["differ"][:50]]
    lines.append("")
    return "\n".join(lines)
