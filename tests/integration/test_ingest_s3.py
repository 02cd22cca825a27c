"""Ingestion with the landing zone and the DVC remote on a real S3 API endpoint (moto server)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from include.demo_data import make_batch

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _put(s3, bucket, key, df):
    s3.put_object(Bucket=bucket, Key=key, Body=df.to_csv(index=False).encode())


def test_s3_landing_and_dvc_remote(state, s3_bucket, monkeypatch):
    import boto3

    from include.config import settings
    from include.ingestion import commit_validated, list_landed, validate_landed
    from include.spec import load_spec
    from include.validation import BatchRejected
    from include.versioning import DataRepo

    monkeypatch.setenv("MLOPS_LANDING", f"s3://{s3_bucket}/landing")
    monkeypatch.setenv("MLOPS_DVC_REMOTE", f"s3://{s3_bucket}/dvc")
    s3 = boto3.client("s3")
    _put(s3, s3_bucket, "landing/sessions/day0.csv", make_batch(0, 800))
    bad = make_batch(1, 300)
    bad.loc[:10, "device"] = "toaster"
    _put(s3, s3_bucket, "landing/sessions/bad.csv", bad)

    refs = list_landed("sessions")
    assert refs == [f"s3://{s3_bucket}/landing/sessions/bad.csv", f"s3://{s3_bucket}/landing/sessions/day0.csv"]
    with pytest.raises(BatchRejected, match="bad.csv"):
        validate_landed(refs[0], "sessions")
    extra = commit_validated([validate_landed(refs[1], "sessions")], "sessions")
    assert extra["rows"] == 800

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert any(k.startswith("dvc/") for k in keys), keys  # dvc push reached the S3 remote
    assert "landing/sessions/_ingested/day0.csv" in keys and "landing/sessions/day0.csv" not in keys
    assert "landing/sessions/bad.csv" not in keys  # the bad batch left the landing zone ...
    assert any(p.name.startswith("bad.csv") for p in Path(settings().quarantine_dir).iterdir())  # ... into quarantine
    assert list_landed("sessions") == []

    # a clean cache must pull the exact revision back from the S3 remote
    shutil.rmtree(Path(state.data_repo) / ".dvc" / "cache")
    df = DataRepo().load("sessions", extra["dvc_rev"], load_spec("sessions"))
    assert len(df) == 800
