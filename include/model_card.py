"""A model card per registered version, written at gate time from what the loop recorded.

    card = build_card(record, spec, run_metrics, run_params, version_tags, data)   # pure: a dict
    render_markdown(card) / render_html(card)                                      # pure: text
    log_model_card(record, c)   # the gate's one call: gathers the inputs, logs model_card.md/.html

The card reads the gate's decision record (decision, reasons, checks with the bootstrap interval,
holdout, trigger), the training run (metrics overall and per slice, split sizes), the version's
lineage tags, the dataset spec (task, features and their allowed values) and the data repo (rows,
validation ids and the timestamp column's min/max of the revision's rows). It scores nothing. It is logged to the challenger's run as
``model_card/model_card.md`` and ``model_card/model_card.html`` and its URI tagged on the version
(``model_card``), where the Airflow UI page (plugins/mlops_plugin.py) shows it.
"""

from __future__ import annotations

import html
import json
import logging
import math
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CARD_DIR = "model_card"
CARD_MD = f"{CARD_DIR}/model_card.md"
CARD_HTML = f"{CARD_DIR}/model_card.html"


def _num(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def build_card(record: dict, spec, run_metrics: dict, run_params: dict, version_tags: dict,
               data: dict | None = None) -> dict:
    """The card's content as a dict (every field from an input; nothing is scored here)."""
    data = data or {}
    overall = {k[len("test_"):]: v for k, v in sorted(run_metrics.items()) if k.startswith("test_") and "__" not in k}
    per_slice: dict[str, dict[str, float]] = {}
    for k, v in sorted(run_metrics.items()):
        if k.startswith("test_") and "__" in k:
            metric, sl = k[len("test_"):].split("__", 1)
            per_slice.setdefault(sl, {})[metric] = v
    features = [{"name": c.name, "dtype": c.dtype, "nullable": c.nullable,
                 "allowed": list(c.values) if c.values else ([c.min, c.max] if c.min is not None or c.max is not None
                                                             else None)}
                for c in spec.feature_columns]
    checks = record.get("checks") or []
    limitations = [f"{c['name']}: {c['reason']}" for c in checks if c.get("skipped")]
    holdout = record.get("holdout") or {}
    limitations += [f"holdout: {n}" for n in holdout.get("notes", [])]
    if not record.get("champion"):
        limitations.append("no champion to compare with: only the policy's absolute minimums were checked")
    limitations.append(f"trained on the dataset at one data revision ({version_tags.get('data_rev', '?')[:12]}); "
                       "inputs outside the spec's ranges/values are rejected by the server, and later shifts "
                       "are watched by monitor_drift (drift history on the MLOps page)")
    return {
        "model": record["model"], "version": str(record["version"]), "run_id": record.get("run_id"),
        "dataset": record.get("dataset") or spec.name,
        "intended_use": {"task": spec.task, "target": spec.target,
                         "description": spec.description or f"predict {spec.target} of a {spec.name} row",
                         "serving": f"/models/{record['model']}/predict on the serving edge"},
        "training_data": {
            "dataset": record.get("dataset") or spec.name,
            "data_rev": version_tags.get("data_rev"), "data_md5": version_tags.get("data_md5"),
            "rows": data.get("rows"),
            "split": {k: run_params.get(k) for k in ("n_train", "n_val", "n_test", "split")},
            "validation_id": version_tags.get("validation_id"),
            "validation_ids": data.get("validation_ids"),
            "time_column": spec.timestamp,
            "time_range": data.get("time_range"),
        },
        "features": features,
        "metrics": {"overall_test": overall, "per_slice_test": per_slice,
                    "gate_holdout": (record.get("challenger") or {}).get("metrics") or {}},
        "gate": {"decision": record.get("decision"), "reasons": record.get("reasons") or [],
                 "decided_at": record.get("decided_at"), "override": record.get("override"),
                 "champion_version": (record.get("champion") or {}).get("version"),
                 "checks": checks, "record_uri": record.get("record_uri")},
        "lineage": {k: version_tags.get(k) for k in ("data_rev", "data_md5", "validation_id", "code_sha",
                                                     "dag_run_id", "reason", "family", "run_key", "trigger_user")},
        "trigger": record.get("trigger") or {},
        "limitations": limitations,
    }


def _time_range(td: dict) -> str:
    if not td.get("time_column"):
        return "none (the spec has no timestamp column)"
    tr = td.get("time_range")
    if not tr:
        return f"n/a (`{td['time_column']}` of the data rev could not be read)"
    return f"`{td['time_column']}` from {tr['min']} to {tr['max']}"


def data_time_range(dataset: str, rev: str, spec, window_days: float = 0) -> dict | None:
    """min/max of the spec's timestamp over the rows training selected at ``rev`` (None: no timestamp)."""
    import pandas as pd

    from include.training.inputs import select_window
    from include.versioning import DataRepo

    if not spec.timestamp:
        return None
    df = select_window(DataRepo().load(dataset, rev, spec), spec, window_days)
    ts = pd.to_datetime(df[spec.timestamp], utc=True)
    return {"min": ts.min().isoformat(), "max": ts.max().isoformat()}


def render_markdown(card: dict) -> str:
    td, g = card["training_data"], card["gate"]
    lines = [f"# Model card: {card['model']} v{card['version']}", "",
             "## Intended use", "",
             f"- task: {card['intended_use']['task']} of `{card['intended_use']['target']}`",
             f"- {card['intended_use']['description']}", f"- served at {card['intended_use']['serving']}", "",
             "## Training data", "",
             f"- dataset: {td['dataset']} @ data rev `{td['data_rev']}` (md5 `{td['data_md5']}`)",
             f"- rows: {td['rows'] if td['rows'] is not None else 'n/a'}; split: {json.dumps(td['split'])}",
             f"- validation ids: {', '.join(td['validation_ids'] or [td['validation_id'] or 'n/a'])}",
             f"- time range: {_time_range(td)}", "",
             "## Features", "", "| feature | dtype | nullable | allowed |", "|---|---|---|---|"]
    lines += [f"| {f['name']} | {f['dtype']} | {f['nullable']} | {f['allowed'] if f['allowed'] else ''} |"
              for f in card["features"]]
    lines += ["", "## Metrics (test split)", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_num(v)} |" for k, v in card["metrics"]["overall_test"].items()]
    if card["metrics"]["per_slice_test"]:
        lines += ["", "Per slice:", "", "| slice | metrics |", "|---|---|"]
        lines += [f"| {sl} | {', '.join(f'{k}={_num(v)}' for k, v in ms.items())} |"
                  for sl, ms in card["metrics"]["per_slice_test"].items()]
    lines += ["", "## Gate decision", "", f"- **{g['decision']}** at {g['decided_at']} "
              f"(champion: {'v' + g['champion_version'] if g['champion_version'] else 'none'})"]
    lines += [f"- {r}" for r in g["reasons"]]
    if g["override"]:
        lines.append(f"- override by {g['override'].get('by')}: {g['override'].get('justification')}")
    if g["checks"]:
        lines += ["", "| check | verdict | value | threshold |", "|---|---|---|---|"]
        for c in g["checks"]:
            verdict = "skipped" if c.get("skipped") else ("pass" if c.get("passed") else "FAIL")
            lines.append(f"| {c['name']} | {verdict} | {_num(c.get('value'))} | {c.get('threshold')} |")
    lines += ["", f"Decision record: `{g['record_uri']}`", "", "## Lineage", ""]
    lines += [f"- {k}: {v}" for k, v in card["lineage"].items() if v is not None]
    lines += [f"- trigger {k}: {v}" for k, v in card["trigger"].items() if v is not None]
    lines += ["", "## Known limitations", "", *[f"- {x}" for x in card["limitations"]], ""]
    return "\n".join(lines)


def render_html(card: dict) -> str:
    """The same content as a small standalone HTML page (the markdown in a <pre>-free layout)."""
    body = []
    for line in render_markdown(card).splitlines():
        esc = html.escape(line)
        if line.startswith("# "):
            body.append(f"<h1>{esc[2:]}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{esc[3:]}</h2>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            cells = [c.strip() for c in esc.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        elif line.startswith("- "):
            body.append(f"<li>{esc[2:]}</li>")
        elif line.strip():
            body.append(f"<p>{esc}</p>")
    out, in_table = [], False
    for b in body:  # wrap consecutive rows in one table
        if b.startswith("<tr>") and not in_table:
            out.append("<table border=1 cellpadding=4>")
            in_table = True
        elif not b.startswith("<tr>") and in_table:
            out.append("</table>")
            in_table = False
        out.append(b)
    if in_table:
        out.append("</table>")
    title = html.escape(f"{card['model']} v{card['version']}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Model card {title}</title></head>"
            f"<body style='font-family:sans-serif;max-width:60em'>{''.join(out)}</body></html>")


def log_model_card(record: dict, c) -> str | None:
    """Gather the inputs of the card of record's version, log it to its run, tag the version.

    Returns the card's URI; None (logged) when the card could not be built: a card is documentation
    of a decision already recorded, so its failure never changes the gate's outcome."""
    from include.spec import load_spec
    from include.tracking import with_retry

    try:
        mv = with_retry(c.get_model_version, record["model"], str(record["version"]))
        run = with_retry(c.get_run, mv.run_id)
        tags = dict(mv.tags or {})
        data = {}
        try:
            from include.versioning import DataRepo

            data = DataRepo().lineage(record["dataset"], tags.get("data_rev"))
        except Exception as err:  # noqa: BLE001 - the card says n/a rather than fail
            log.warning("model card: no data repo lineage for %s: %s", record["dataset"], err)
        spec = load_spec(record["dataset"])
        try:
            # training logs no time range: it is read back from the rows of the recorded data rev
            data["time_range"] = data_time_range(record["dataset"], tags.get("data_rev"), spec,
                                                 float(tags.get("selection_window_days") or 0))
        except Exception as err:  # noqa: BLE001 - as above
            log.warning("model card: no time range of %s at %s: %s", record["dataset"], tags.get("data_rev"), err)
        card = build_card(record, spec, dict(run.data.metrics), dict(run.data.params), tags, data)
    except Exception:  # see the docstring
        log.exception("model card of %s v%s not built", record.get("model"), record.get("version"))
        return None
    with tempfile.TemporaryDirectory(prefix="model-card-") as tmp:
        d = Path(tmp)
        (d / "model_card.md").write_text(render_markdown(card))
        (d / "model_card.html").write_text(render_html(card))
        (d / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        for name in ("model_card.md", "model_card.html", "model_card.json"):
            with_retry(c.log_artifact, mv.run_id, str(d / name), CARD_DIR)
    uri = f"runs:/{mv.run_id}/{CARD_MD}"
    with_retry(c.set_model_version_tag, record["model"], str(record["version"]), "model_card", uri)
    return uri
