"""Stage 1 orchestration: landing zone -> validation gate -> DVC-versioned dataset.

The landing zone is a local directory by default, or ``s3://bucket/prefix`` (read through the
amazon provider's S3Hook, connection ``aws_default``, endpoint from ``MLOPS_S3_ENDPOINT``).
Each dataset has its own prefix, ``<landing>/<dataset>/``, so several datasets land side by side.
A batch is one CSV (or CSV.gz) file. After it is handled it leaves the landing zone: into
``<landing>/<dataset>/_ingested/`` when it landed in the dataset, into quarantine when it was rejected,
so the next run does not see it again. Re-landing an ingested file is still a no-op: the dataset
manifest knows its content md5.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
from pathlib import Path

from include.config import Settings, settings

log = logging.getLogger(__name__)

INGESTED_SUBDIR = "_ingested"


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _s3_hook():
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s = settings()
    if s.s3_endpoint:
        # boto3 honours AWS_ENDPOINT_URL: an explicit endpoint (moto, MinIO) for every client.
        os.environ.setdefault("AWS_ENDPOINT_URL", s.s3_endpoint)
    return S3Hook(aws_conn_id="aws_default")


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://"):].partition("/")
    return bucket, prefix.rstrip("/")


def landing_prefix(dataset: str, s: Settings | None = None) -> str:
    """Where batches of ``dataset`` land: ``<landing>/<dataset>/`` (a directory or an S3 prefix)."""
    s = s or settings()
    return f"{s.landing.rstrip('/')}/{dataset}"


def list_landed(dataset: str, pattern: str = "*.csv*", s: Settings | None = None) -> list[str]:
    """Batch references waiting in ``dataset``'s landing prefix, oldest name first."""
    s = s or settings()
    where = landing_prefix(dataset, s)
    if s.landing_is_s3:
        bucket, prefix = _split_s3(where)
        # one level (delimiter "/"): the prefix's own files, never its growing _ingested/ archive
        keys = _s3_hook().list_keys(bucket_name=bucket, prefix=f"{prefix}/", delimiter="/") or []
        return sorted(f"s3://{bucket}/{k}" for k in keys if fnmatch.fnmatch(k.rsplit("/", 1)[-1], pattern))
    landing = Path(where)
    if not landing.exists():
        return []
    return sorted(str(p) for p in landing.glob(pattern) if p.is_file())


def stray_landed(datasets: list[str], s: Settings | None = None) -> list[str]:
    """Entries at the landing root that no dataset prefix covers (files, or folders named after no
    spec, shown with a trailing "/"): nothing ingests them.

    Only the root level is listed: the dataset prefixes and their growing `_ingested/` archives
    are not walked on every run.
    """
    s = s or settings()
    if s.landing_is_s3:
        bucket, prefix = _split_s3(s.landing)
        root = f"{prefix}/" if prefix else ""
        hook = _s3_hook()
        files = [k[len(root):] for k in hook.list_keys(bucket_name=bucket, prefix=root, delimiter="/") or []]
        folders = [p[len(root):] for p in hook.list_prefixes(bucket_name=bucket, prefix=root, delimiter="/") or []]
    else:
        landing = Path(s.landing)
        entries = list(landing.iterdir()) if landing.exists() else []
        files = [p.name for p in entries if p.is_file()]
        folders = [f"{p.name}/" for p in entries if p.is_dir()]
    known = {f"{d}/" for d in datasets} | {f"{INGESTED_SUBDIR}/"}
    return sorted(files + [f for f in folders if f not in known])


def _staged_path(batch_ref: str, s: Settings) -> Path:
    """Local copy of an S3 batch: keeps the object's file name (reports and quarantine show it)."""
    bucket, key = _split_s3(batch_ref)
    return s.state_dir / "staging" / hashlib.sha1(batch_ref.encode()).hexdigest()[:12] / key.rsplit("/", 1)[-1]


def stage(batch_ref: str, s: Settings | None = None) -> Path:
    """A local file for the batch: the file itself, or an S3 object downloaded to the staging dir."""
    s = s or settings()
    if not batch_ref.startswith("s3://"):
        path = Path(batch_ref)
        if not path.exists():
            raise FileNotFoundError(f"batch {batch_ref} does not exist (already ingested or quarantined?)")
        return path
    bucket, key = _split_s3(batch_ref)
    target = _staged_path(batch_ref, s)
    target.parent.mkdir(parents=True, exist_ok=True)
    hook = _s3_hook()
    obj = hook.get_key(key, bucket_name=bucket)
    if obj.content_length > s.max_batch_bytes:
        from include.validation import BatchRejected

        raise BatchRejected(
            batch=batch_ref, kind="too_large",
            message=f"batch {batch_ref} is {obj.content_length} bytes, over the limit of "
                    f"{s.max_batch_bytes} (MLOPS_MAX_BATCH_BYTES)",
            details={"bytes": obj.content_length, "limit": s.max_batch_bytes},
        )
    obj.download_file(str(target))
    return target


def archive(batch_ref: str, s: Settings | None = None) -> str:
    """Move an ingested batch out of the landing zone (idempotent)."""
    s = s or settings()
    if batch_ref.startswith("s3://"):
        bucket, key = _split_s3(batch_ref)
        hook = _s3_hook()
        if hook.check_for_key(key, bucket_name=bucket):
            prefix, _, name = key.rpartition("/")
            dest = f"{prefix}/{INGESTED_SUBDIR}/{name}" if prefix else f"{INGESTED_SUBDIR}/{name}"
            hook.copy_object(key, dest, source_bucket_name=bucket, dest_bucket_name=bucket)
            hook.delete_objects(bucket, [key])
        return batch_ref
    src = Path(batch_ref)
    dest_dir = src.parent / INGESTED_SUBDIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    if src.exists():
        shutil.move(str(src), dest_dir / src.name)
    return str(dest_dir / src.name)


def validate_landed(batch_ref: str, dataset: str, s: Settings | None = None) -> dict:
    """Read and validate one batch. Rejected: quarantine with a report and raise BatchRejected.

    Returns a small dict for XCom: {batch, path, md5, validation_id, rows}.
    """
    from include.metrics_push import quarantine_outcome
    from include.spec import load_spec
    from include.validation import BatchRejected, check_batch, quarantine, save_validation

    s = s or settings()
    spec = load_spec(dataset, s.specs_dir)
    try:
        path = stage(batch_ref, s)
        df, report = check_batch(path, spec)
    except BatchRejected as err:
        report = getattr(err, "report", None)
        if report is not None:
            save_validation(report, s.reports_dir)
        if batch_ref.startswith("s3://"):
            local = _staged_path(batch_ref, s)
            if local.exists():
                where = quarantine(local, err, s.quarantine_dir)
                bucket, key = _split_s3(batch_ref)
                _s3_hook().delete_objects(bucket, [key])
            else:
                where = s.quarantine_dir
        else:
            where = quarantine(Path(batch_ref), err, s.quarantine_dir)
        log.error("%s; quarantined at %s", err, where)  # the message names the batch, kind and reason
        quarantine_outcome(dataset, err.kind)
        err.quarantine_path = str(where)
        raise
    save_validation(report, s.reports_dir)
    log.info("batch %s passed validation %s (%d rows)", batch_ref, report.validation_id, len(df))
    return {
        "batch": batch_ref, "path": str(path), "md5": file_md5(path),
        "validation_id": report.validation_id, "rows": int(len(df)),
    }


def commit_validated(batches: list[dict], dataset: str, s: Settings | None = None) -> dict | None:
    """Commit validated batches to the DVC dataset in order; return the extra of the revision to announce.

    Safe to retry after a crash anywhere: each batch is committed once (the data repo repairs a
    half-done commit, see :meth:`DataRepo.commit_batch`) and leaves the landing zone only once its
    commit is pushed. Returns the dataset's revision as the ``dataset`` Asset extra unless that
    revision was already confirmed announced (:func:`confirm_announced`), else None. A retry that
    finds the commit done therefore still returns it; the DAG confirms it after the event is recorded.
    """
    from include.crashpoints import crash_point
    from include.spec import load_spec
    from include.validation import read_batch
    from include.versioning import DataRepo

    s = s or settings()
    spec = load_spec(dataset, s.specs_dir)
    repo = DataRepo(s)
    newest = None
    for b in batches:
        # Re-read rather than pass data through XCom; the file was validated moments ago and its
        # md5 is re-checked so a file swapped in between can neither slip past the gate nor be
        # archived in place of the batch that was committed. A missing file is a retry's: the
        # batch was archived, so its commit is at HEAD and nothing needs reading.
        path = Path(b["path"])
        if path.exists() and file_md5(path) != b["md5"]:
            raise RuntimeError(f"batch {b['batch']} changed after validation; re-run the ingest")
        newest = repo.commit_batch(
            dataset, lambda path=path: read_batch(path, spec), batch_md5=b["md5"],
            batch_name=Path(b["batch"]).name, validation_id=b["validation_id"],
        )
        crash_point("ingest.after_push")
        archive(b["batch"], s)
        if b["batch"].startswith("s3://"):
            path.unlink(missing_ok=True)  # the staged copy; the data now lives in DVC
    if newest is None or repo.announced(dataset, newest.dvc_rev):
        return None
    return newest.asset_extra()


def confirm_announced(extra: dict, s: Settings | None = None) -> None:
    """Record that the ``dataset`` event for this extra is durable, so no later run announces it again.

    Call it after the task that emitted the event has succeeded (a downstream task): Airflow
    writes the event together with that task's success, never before.
    """
    from include.versioning import DataRepo

    DataRepo(s or settings()).mark_announced(extra["dataset"], extra["dvc_rev"])
