"""Records: validation reports under reports/validations/ and quarantined batches with their report."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from include.jsonsafe import json_safe
from include.validation.report import BatchRejected, ValidationReport


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, allow_nan=False))
    os.replace(tmp, path)


def save_validation(report: ValidationReport, reports_dir: Path | None = None) -> Path:
    """Write ``<reports_dir>/validations/<validation_id>.json`` (summary + full GX result)."""
    if reports_dir is None:
        from include.config import settings

        reports_dir = settings().reports_dir
    out = Path(reports_dir) / "validations" / f"{report.validation_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json(out, report.to_json())
    return out


def quarantine(
    batch_path: Path,
    error: BatchRejected | ValidationReport,
    quarantine_dir: Path | None = None,
) -> Path:
    """Move a rejected batch to ``<quarantine_dir>/<file name>-<short id>/`` with report.json + report.md.

    The file keeps its name inside the folder. The folder name is new on every call, so a
    quarantine never overwrites an earlier one. Raises FileNotFoundError if the batch is gone.
    """
    batch_path = Path(batch_path)
    if not batch_path.exists():
        raise FileNotFoundError(f"cannot quarantine {batch_path}: it does not exist")
    if quarantine_dir is None:
        from include.config import settings

        quarantine_dir = settings().quarantine_dir
    quarantine_dir = Path(quarantine_dir)
    quarantine_dir.mkdir(parents=True, exist_ok=True)

    report = error if isinstance(error, ValidationReport) else error.report
    short = report.validation_id.rsplit("-", 1)[-1] if report is not None else uuid.uuid4().hex[:8]
    while True:
        folder = quarantine_dir / f"{batch_path.name}-{short}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            short = uuid.uuid4().hex[:8]

    shutil.move(str(batch_path), str(folder / batch_path.name))

    now = datetime.now(UTC).isoformat(timespec="seconds")
    if isinstance(error, BatchRejected):
        record = {**error.to_json(), "time": now}
        record["details"] = {k: v for k, v in record["details"].items() if k != "report"}
    else:
        record = {"batch": error.batch, "kind": "expectations_failed", "message": error.summary(3),
                  "details": {}, "validation_id": error.validation_id, "failures": error.failures, "time": now}
    record["source_path"] = str(batch_path)
    record["quarantined_path"] = str(folder / batch_path.name)
    _write_json(folder / "report.json", json_safe(record))
    (folder / "report.md").write_text(_quarantine_markdown(record, report))
    return folder


def _quarantine_markdown(record: dict, report: ValidationReport | None) -> str:
    lines = [
        f"# Quarantined batch `{record['batch']}`",
        "",
        f"- reason: **{record['kind']}**",
        f"- time: {record['time']}",
        f"- from: `{record['source_path']}`",
        "",
        record["message"],
        "",
    ]
    details = record.get("details") or {}
    if details:
        lines += ["## Details", "", "```json", json.dumps(details, indent=2)[:5000], "```", ""]
    if report is not None:
        lines += ["## Validation report", "", report.to_markdown()]
    return "\n".join(lines)
