"""The ingest DAG on real Airflow (dag.test), real GX, real git + DVC with a local remote."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import pytest

from include.demo_data import make_batch, write_batch
from tests.dagrun import run_dag, task_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _commits(repo: Path) -> list[str]:
    if not (repo / ".git").exists():
        return []
    return subprocess.run(["git", "log", "--format=%H"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.split()


def _remote_files(remote: Path) -> set[str]:
    return {str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file()} if remote.exists() else set()


def _asset_events(run_id: str) -> list[dict]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        return [dict(e.extra) for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == run_id)]


def test_good_batch_lands_emits_asset_and_rerun_is_noop(airflow_db, state):
    landing = Path(state.landing) / "sessions"
    write_batch(make_batch(0, 2000), landing / "day0.csv")
    dr = run_dag("ingest")
    assert str(dr.state) == "success", task_states(dr)
    repo = Path(state.data_repo)
    commits = _commits(repo)
    assert len(commits) == 2  # init + the batch
    events = _asset_events(dr.run_id)
    assert len(events) == 1
    extra = events[0]
    assert extra["dvc_rev"] == commits[0]
    assert extra["rows"] == 2000 and extra["md5"].endswith(".dir") and extra["validation_id"]
    # the validation result is stored where the lineage points
    assert (Path(state.reports_dir) / "validations" / f"{extra['validation_id']}.json").exists()
    # pushed: the remote holds the batch
    assert _remote_files(Path(state.dvc_remote))
    assert not (landing / "day0.csv").exists() and (landing / "_ingested" / "day0.csv").exists()

    # the same batch landed again: no new commit, no asset event
    write_batch(make_batch(0, 2000), landing / "day0-again.csv")
    dr2 = run_dag("ingest")
    assert str(dr2.state) == "success", task_states(dr2)
    assert _commits(repo) == commits
    assert _asset_events(dr2.run_id) == []


def test_bad_batch_is_quarantined_and_nothing_changes(airflow_db, state):
    landing = Path(state.landing) / "sessions"
    write_batch(make_batch(0, 1000), landing / "good.csv")
    run_dag("ingest")
    repo, remote = Path(state.data_repo), Path(state.dvc_remote)
    before_commits, before_remote = _commits(repo), _remote_files(remote)

    bad = make_batch(1, 1000)
    bad.loc[:30, "pages_viewed"] = -5
    write_batch(bad, landing / "bad.csv")
    dr = run_dag("ingest")
    assert str(dr.state) == "failed"
    states = task_states(dr)
    assert states["validate[0]"] == "failed" and states["commit[-1]"] == "skipped", states
    assert states["report[-1]"] == "upstream_failed", states  # the run fails through it, with no error of its own
    assert _commits(repo) == before_commits
    assert _remote_files(remote) == before_remote
    assert _asset_events(dr.run_id) == []
    [qdir] = [p for p in Path(state.quarantine_dir).iterdir() if p.name.startswith("bad.csv")]
    report = json.loads((qdir / "report.json").read_text())
    assert "pages_viewed" in json.dumps(report)
    assert (qdir / "report.md").exists() and (qdir / "bad.csv").exists()
    assert not (landing / "bad.csv").exists()


def _bad_batches(tmp: Path) -> dict[str, Path]:
    good = make_batch(2, 300)
    out = {}
    (tmp / "empty.csv").write_bytes(b"")
    out["empty_file"] = tmp / "empty.csv"
    (tmp / "header.csv").write_text(",".join(good.columns) + "\n")
    out["header_only"] = tmp / "header.csv"
    good.to_csv(tmp / "semi.csv", sep=";", index=False)
    out["wrong_delimiter"] = tmp / "semi.csv"
    write_batch(good.drop(columns=["device"]), tmp / "missing.csv")
    out["missing_columns"] = tmp / "missing.csv"
    write_batch(good.assign(extra_col=1), tmp / "extra.csv")
    out["unexpected_columns"] = tmp / "extra.csv"
    write_batch(good.assign(pages_viewed="many"), tmp / "dtype.csv")
    out["wrong_dtype"] = tmp / "dtype.csv"
    flood = good.copy()
    flood.loc[: int(len(flood) * 0.8), "price_viewed"] = None
    write_batch(flood, tmp / "flood.csv")
    out["nan_flood"] = tmp / "flood.csv"
    rng = good.copy()
    rng.loc[:3, "discount_pct"] = 500.0
    write_batch(rng, tmp / "range.csv")
    out["out_of_range"] = tmp / "range.csv"
    dup = good.copy()
    dup.loc[1, "session_id"] = dup.loc[0, "session_id"]
    write_batch(dup, tmp / "dup.csv")
    out["duplicate_keys"] = tmp / "dup.csv"
    raw = good.to_csv(index=False).encode()
    (tmp / "utf8.csv").write_bytes(raw[:200] + b"\xff\xfe\xfa" + raw[200:])
    out["invalid_utf8"] = tmp / "utf8.csv"
    (tmp / "corrupt.csv.gz").write_bytes(gzip.compress(raw)[:-200])
    out["corrupt_gzip"] = tmp / "corrupt.csv.gz"
    return out


def test_every_bad_kind_leaves_repo_and_remote_unchanged(state, tmp_path, monkeypatch):
    """Each bad kind through the ingest code path: quarantined, clear error, nothing downstream."""
    from include.ingestion import commit_validated, validate_landed
    from include.validation import BatchRejected

    landing = Path(state.landing) / "sessions"
    write_batch(make_batch(0, 500), landing / "seed.csv")
    commit_validated([validate_landed(str(landing / "seed.csv"), "sessions")], "sessions")
    repo, remote = Path(state.data_repo), Path(state.dvc_remote)
    before_commits, before_remote = _commits(repo), _remote_files(remote)

    src = tmp_path / "bad"
    src.mkdir()
    for kind, path in _bad_batches(src).items():
        landed = landing / path.name
        path.rename(landed)
        with pytest.raises(BatchRejected) as exc:
            validate_landed(str(landed), "sessions")
        assert landed.name in str(exc.value), (kind, str(exc.value))
        assert not landed.exists(), f"{kind}: batch left in landing"
        assert Path(exc.value.quarantine_path, "report.json").exists(), kind
    # a file over the size limit
    monkeypatch.setenv("MLOPS_MAX_BATCH_BYTES", "10000")
    write_batch(make_batch(3, 2000), landing / "huge.csv")
    with pytest.raises(BatchRejected) as exc:
        validate_landed(str(landing / "huge.csv"), "sessions")
    assert exc.value.kind == "too_large"

    assert _commits(repo) == before_commits
    assert _remote_files(remote) == before_remote


def test_the_demo_leaves_nothing_queued_for_a_later_scheduler(airflow_db, state):
    """dag.test's Asset events queue asset-triggered runs; a scheduler started later on the same
    state would run them (issue 17: the demo's leftovers re-registered the champion)."""
    from airflow.models.asset import AssetDagRunQueue
    from airflow.utils.session import create_session

    from include.demo import leave_nothing_queued

    write_batch(make_batch(0, 500), Path(state.landing) / "sessions" / "day0.csv")
    assert str(run_dag("ingest").state) == "success"
    with create_session() as session:
        assert session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id == "train").count() == 1
    leave_nothing_queued()
    with create_session() as session:
        assert session.query(AssetDagRunQueue).count() == 0
