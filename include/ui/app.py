"""The MLOps page's FastAPI app, mounted by plugins/mlops_plugin.py on Airflow's API server at /mlops.

    GET /mlops/                                   the page (server-rendered HTML, no build step)
    GET /mlops/api/overview                       per dataset: champion, challenger, serving, last ingest/drift
    GET /mlops/api/models/{model}/versions        metrics, gate decision + reasons, lineage, MLflow link
    GET /mlops/api/models/{model}/versions/{v}/card   the version's model card (HTML, from MLflow)
    GET /mlops/api/timeline?dataset=              what the loop did, newest first
    GET /mlops/api/drift?dataset=                 drift checks; /api/drift/report?path= one Evidently report
    GET /mlops/api/lineage?request_id=|batch_run= the full lineage record

Every route depends on :func:`airflow_user`: Airflow's own ``get_user`` (the UI's JWT cookie or a
Bearer token from ``POST /auth/token``) and the auth manager's ``is_authorized_view(WEBSITE)``, so
a request without a valid token gets 401/403 and no data. What it shows comes from
:mod:`include.ui.records`; a store that is down or slow shows as "unavailable", never a hang.
"""

from __future__ import annotations

import html
import json
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

from include.ui import records


async def airflow_user(request: Request):
    """The Airflow user of this request, through Airflow's auth manager (401/403 otherwise)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user, requires_access_view
    from fastapi.security import HTTPAuthorizationCredentials

    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    creds = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if token else None
    user = await get_user(request, None, creds)  # Bearer header, else the UI's cookie
    requires_access_view(AccessView.WEBSITE)(request, user)  # raises 403 when not allowed
    return user


app = FastAPI(title="MLOps loop", description=__doc__, dependencies=[Depends(airflow_user)])


def _known_dataset(dataset: str | None) -> str | None:
    if dataset and dataset not in records.datasets():
        raise HTTPException(404, f"unknown dataset {dataset!r}; known: {sorted(records.datasets())}")
    return dataset or None


@app.get("/api/overview")
def api_overview() -> dict:
    return records.overview()


@app.get("/api/models/{model}/versions")
def api_versions(model: str, limit: int = Query(20, ge=1, le=200)) -> dict:
    try:
        return records.versions(model, limit)
    except KeyError as err:
        raise HTTPException(404, f"no dataset spec names the model {model!r}") from err


@app.get("/api/models/{model}/versions/{version}/card", response_class=HTMLResponse)
def api_card(model: str, version: str) -> HTMLResponse:
    try:
        return HTMLResponse(records.model_card_html(model, version))
    except records.Unavailable as err:
        return HTMLResponse(f"<p class=unavailable>model card unavailable: {html.escape(str(err))}</p>",
                            status_code=503)


@app.get("/api/timeline")
def api_timeline(dataset: str | None = None, limit: int = Query(records.TIMELINE_LIMIT, ge=1, le=5000)) -> dict:
    return records.timeline(_known_dataset(dataset), limit)


@app.get("/api/drift")
def api_drift(dataset: str | None = None) -> dict:
    return records.drift_history(_known_dataset(dataset))


@app.get("/api/drift/report")
def api_drift_report(path: str) -> FileResponse:
    try:
        return FileResponse(records.drift_report_file(path), media_type="text/html")
    except FileNotFoundError as err:
        raise HTTPException(404, f"no drift report {path!r}") from err


@app.get("/api/lineage")
def api_lineage(request_id: str | None = None, batch_run: str | None = None) -> dict:
    if bool(request_id) == bool(batch_run):
        raise HTTPException(422, "give exactly one of request_id or batch_run")
    try:
        return records.lineage(request_id=request_id, batch_run=batch_run)
    except LookupError as err:
        raise HTTPException(404, str(err)) from err
    except records.Unavailable as err:
        raise HTTPException(503, str(err)) from err


# ----------------------------------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,sans-serif;margin:1rem;color:#222} h1{font-size:1.4rem} h2{font-size:1.15rem;
margin-top:1.6rem;border-bottom:1px solid #ccc} table{border-collapse:collapse;margin:.4rem 0}
td,th{border:1px solid #ddd;padding:.25rem .5rem;vertical-align:top;text-align:left;font-size:.9rem}
th{background:#f4f4f4} .unavailable{color:#a00;font-weight:bold} .passed,.deploy{color:#070}
.rejected,.rollback,.quarantine,.validation_failed{color:#a00} nav a{margin-right:1rem} code{font-size:.85rem}
iframe{width:100%;height:600px;border:1px solid #ccc} .muted{color:#777}
"""


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _q(**kw) -> str:
    return "?" + urlencode({k: v for k, v in kw.items() if v})


def _unavail(block: dict) -> str:
    return f"<span class=unavailable>unavailable: {_e(block.get('error'))}</span>"


def _overview_html(ov: dict) -> str:
    rows = []
    for d in ov["datasets"]:
        reg = d["registry"]
        champ = f"v{_e(d['champion'])}" if d["champion"] else "none"
        chall = f"v{_e(d['challenger'])}" if d["challenger"] else "none"
        if not reg.get("available"):
            champ = chall = _unavail(reg)
        srv = d["serving"]
        if srv.get("available") is False:
            serving = _unavail(srv)
        else:
            act, fb = srv.get("active") or {}, srv.get("fallback") or {}
            serving = (f"v{_e(act.get('version'))} <span class=muted>({_e(act.get('url'))})</span>" if act
                       else "nothing") + (f"; fallback v{_e(fb.get('version'))}" if fb else "")
            if srv.get("canary"):
                serving += f"; canary {_e(json.dumps(srv['canary']))}"
        ing = d["last_ingest"]
        ingest = (f"{_e(ing['created_at'])}: {_e(ing['batch'])}, {_e(ing['rows'])} rows, validation "
                  f"{'passed' if ing['success'] else 'FAILED'}" if ing else "none")
        dr = d["last_drift_check"]
        drift = (f"{_e(dr['at'])}: <b>{_e(dr['code'])}</b> (share drifted {_e(dr['share_drifted'])}; "
                 f"{'retrain triggered' if dr['retrain'] else 'no retrain'}) <span class=muted>{_e(dr['reason'])}</span>"
                 if dr else "none")
        rows.append(f"<tr data-dataset='{_e(d['dataset'])}'><td><a href='{_q(dataset=d['dataset'])}'>"
                    f"{_e(d['dataset'])}</a></td><td><a href='{_q(dataset=d['dataset'], model=d['model'])}#versions'>"
                    f"{_e(d['model'])}</a></td><td class=champion>{champ}</td><td class=challenger>{chall}</td>"
                    f"<td>{serving}</td><td>{ingest}</td><td>{drift}</td></tr>")
    return ("<table id=overview><tr><th>dataset</th><th>model</th><th>champion</th><th>challenger</th>"
            "<th>serving now (edge)</th><th>last ingest</th><th>last drift check</th></tr>" + "".join(rows) + "</table>")


def _versions_html(vs: dict) -> str:
    out = []
    if not vs["registry"].get("available"):
        out.append(f"<p>MLflow registry {_unavail(vs['registry'])} (gate decisions below are from the audit log)</p>")
    mlflow_ui = vs.get("mlflow_ui")
    rows = []
    for v in vs["versions"]:
        g = v.get("gate") or {}
        reasons = "".join(f"<li>{_e(r)}</li>" for r in g.get("reasons") or [])
        boot = g.get("bootstrap")
        boot_s = (f"<br><span class=muted>bootstrap: {_e(boot.get('reason'))}</span>" if boot else "")
        by = (g.get("override") or {}).get("by") or (g.get("trigger") or {}).get("user")
        gate = (f"<b class='{_e(g.get('decision'))}'>{_e(g.get('decision'))}</b> vs champion "
                f"{_e(g.get('champion_version') or 'none')}" + (f" (override by {_e(by)})" if g.get("override") else "")
                + f"<ul class=reasons>{reasons}</ul>{boot_s}") if g else "<span class=muted>not gated</span>"
        lin = v.get("lineage") or {}
        lineage = "<br>".join(f"{_e(k)}: <code>{_e(val)}</code>" for k, val in lin.items() if val)
        metrics = ", ".join(f"{_e(k)}={val:.4f}" for k, val in (v.get("metrics") or {}).items())
        slices = "<br>".join(f"{_e(k)}={val:.4f}" for k, val in (v.get("slice_metrics") or {}).items())
        run = v.get("run_id")
        link = (f"<a target=_blank href='{_e(mlflow_ui)}/#/models/{_e(vs['model'])}/versions/{_e(v['version'])}'>MLflow</a>"
                if mlflow_ui else f"<span class=muted>run {_e(run)}</span>" if run else "")
        card = (f"<a href='api/models/{_e(vs['model'])}/versions/{_e(v['version'])}/card' target=_blank>model card</a>"
                if v.get("model_card") else "")
        aliases = " ".join(f"<b>{_e(a)}</b>" for a in v.get("aliases") or [])
        rows.append(f"<tr class=version data-version='{_e(v['version'])}'><td>v{_e(v['version'])} {aliases}</td>"
                    f"<td>{metrics}<br><span class=muted>{slices}</span></td><td class=gate>{gate}</td>"
                    f"<td>{lineage}</td><td>{link}<br>{card}</td></tr>")
    out.append("<table id=versions-table><tr><th>version</th><th>test metrics (overall, per slice)</th>"
               "<th>gate decision</th><th>lineage</th><th>links</th></tr>" + "".join(rows) + "</table>")
    return "".join(out)


def _timeline_html(tl: dict) -> str:
    rows = "".join(f"<tr class='event {_e(e['kind'])}'><td>{_e(e['at'])}</td><td>{_e(e['dataset'])}</td>"
                   f"<td class='{_e(e['kind'])}'>{_e(e['kind'])}</td><td>{_e(e['summary'])}</td></tr>"
                   for e in tl["events"][:200])
    return (f"<p class=muted>{tl['total']} events{' of ' + _e(tl['dataset']) if tl['dataset'] else ''}</p>"
            "<table id=timeline><tr><th>time (UTC)</th><th>dataset</th><th>what</th><th>detail</th></tr>"
            + rows + "</table>")


def _drift_html(dh: dict, report: str | None) -> str:
    rows = "".join(
        f"<tr><td>{_e(c['at'])}</td><td>{_e(c['dataset'])}</td><td>{_e(c['model'])} v{_e(c['model_version'])}</td>"
        f"<td><b>{_e(c['code'])}</b>{' (retrain)' if c['retrain'] else ''}</td><td>{_e(c['share_drifted'])}</td>"
        f"<td>{_e(', '.join(c['drifted_features']))}</td><td>"
        + (f"<a href='{_q(dataset=dh['dataset'], report=c['report'])}#drift'>view report</a>" if c["report"] else "-")
        + "</td></tr>" for c in dh["checks"][:50])
    frame = (f"<h3>Evidently report {_e(report)}</h3><iframe id=drift-report src='api/drift/report{_q(path=report)}'>"
             "</iframe>") if report else ""
    return ("<table id=drift-table><tr><th>time</th><th>dataset</th><th>model</th><th>decision</th><th>share drifted</th>"
            "<th>drifted features</th><th>report</th></tr>" + rows + "</table>" + frame)


def _lineage_html(request_id: str | None, batch_run: str | None) -> str:
    form = ("<form method=get action='#lineage'><input name=request_id placeholder='request id' size=40 "
            f"value='{_e(request_id)}'> or <input name=batch_run placeholder='batch run id' size=30 "
            f"value='{_e(batch_run)}'> <button type=submit>Look up</button></form>")
    if not (request_id or batch_run):
        return form
    try:
        out = f"<pre id=lineage-record>{_e(json.dumps(records.lineage(request_id, batch_run), indent=2, default=str))}</pre>"
    except LookupError as err:
        out = f"<p class=unavailable>not found: {_e(err)}</p>"
    except records.Unavailable as err:
        out = f"<p class=unavailable>unavailable: {_e(err)}</p>"
    return form + out


ACTIONS = (("train", "Retrain (with a reason)"), ("deploy", "Deploy / roll back a version"),
           ("monitor_drift", "Force a drift check"), ("ingest", "Ingest landed batches"))


@app.get("/", response_class=HTMLResponse)
def page(request: Request, dataset: str | None = None, model: str | None = None, report: str | None = None,
         request_id: str | None = None, batch_run: str | None = None) -> HTMLResponse:
    dataset = _known_dataset(dataset)
    names = records.datasets()
    overview = records.overview()
    # which model's versions to show: the one asked for, the dataset's, else the first that has a champion
    served = [d["model"] for d in overview["datasets"] if d["champion"] or d["challenger"]]
    model = model or (names.get(dataset) if dataset else None) or next(iter(served + sorted(names.values())), None)
    base = str(request.base_url).rstrip("/")  # the Airflow API server (the UI is served from it too)
    actions = " ".join(f"<a target=_top href='{_e(base)}/dags/{d}'>{_e(label)}</a>" for d, label in ACTIONS)
    pick = " ".join(f"<a href='{_q(dataset=d)}'>{'<b>' + _e(d) + '</b>' if d == dataset else _e(d)}</a>"
                    for d in sorted(names)) + f" <a href='{_q()}'>all</a>"
    versions = records.versions(model) if model else None
    body = [
        "<h1>MLOps loop</h1>",
        f"<nav>datasets: {pick}</nav>",
        f"<p>Actions (Airflow trigger forms; the page never bypasses a DAG run): {actions}</p>",
        "<h2 id=overview-h>Overview</h2>", _overview_html(overview),
        f"<h2 id=versions>Versions of {_e(model)}</h2>",
        " ".join(f"<a href='{_q(dataset=dataset, model=m)}#versions'>{_e(m)}</a>" for m in sorted(names.values())),
        _versions_html(versions) if versions else "<p>no model</p>",
        "<h2 id=timeline-h>Timeline</h2>", _timeline_html(records.timeline(dataset, 200)),
        "<h2 id=drift>Drift</h2>", _drift_html(records.drift_history(dataset), report),
        "<h2 id=lineage>Lineage search</h2>", _lineage_html(request_id, batch_run),
    ]
    return HTMLResponse(f"<!doctype html><html><head><meta charset=utf-8><title>MLOps loop</title>"
                        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
