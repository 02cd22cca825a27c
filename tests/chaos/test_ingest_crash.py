"""kill -9 of `ingest`'s commit at each named crash point, then the retry: no batch lost or doubled.

The commit step runs for real (git, DVC, a local DVC remote) in a child process that
``MLOPS_CRASH_AT`` kills with ``os._exit``; the retry runs in this process, as an Airflow task
retry would. Invariants after the retry (docs/reliability.md):

* every landed good batch is in the dataset at HEAD exactly once, one git commit per batch;
* HEAD's data is in the DVC remote; no uncommitted change is left in the data repo;
* nothing archived out of landing that is not committed and pushed (checked right after the crash
  too), nothing left in landing that is;
* the `dataset` Asset extra for the new revision is returned by the retry, and once the DAG has
  confirmed it, never again.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from include.demo_data import make_batch, write_batch
from tests.chaos._crash import run_until_crash

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

DATASET = "sessions"
CHILD = (
    "import json, sys\n"
    "from include.ingestion import commit_validated\n"
    "commit_validated(json.loads(sys.argv[1]), sys.argv[2])\n"
)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def _head_manifest(repo: Path) -> list[dict]:
    proc = subprocess.run(["git", "show", f"HEAD:manifests/{DATASET}.json"], cwd=repo, capture_output=True,
                          text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else []


def _in_remote(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


def _head_pushed(repo: Path, remote: Path) -> bool:
    """HEAD's dataset directory object and every file in it are in the DVC remote."""
    import yaml

    dir_md5 = yaml.safe_load(_git(repo, "show", f"HEAD:data/{DATASET}.dvc"))["outs"][0]["md5"]
    if not _in_remote(remote, dir_md5):
        return False
    listing = json.loads((remote / "files" / "md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    return all(_in_remote(remote, e["md5"]) for e in listing)


def _land(state, days: list[int]) -> tuple[list[dict], list[Path]]:
    from include.ingestion import validate_landed

    landed = [write_batch(make_batch(d, 400, seed=100 + d), Path(state.landing) / DATASET / f"day{d}.csv")
              for d in days]
    return [validate_landed(str(p), DATASET) for p in landed], landed


def _ingested(path: Path) -> Path:
    from include.ingestion import INGESTED_SUBDIR

    return path.parent / INGESTED_SUBDIR / path.name


def _batch_pushed(repo: Path, remote: Path, entry: dict) -> bool:
    """The batch's parquet file (as HEAD's dataset directory lists it) is in the DVC remote."""
    import yaml

    dir_md5 = yaml.safe_load(_git(repo, "show", f"HEAD:data/{DATASET}.dvc"))["outs"][0]["md5"]
    listing = json.loads((repo / ".dvc" / "cache" / "files" / "md5" / dir_md5[:2] / dir_md5[2:]).read_text())
    return any(e["relpath"] == entry["file"] and _in_remote(remote, e["md5"]) for e in listing)


def _assert_archived_only_if_durable(state, landed: list[Path], batches: list[dict]) -> None:
    repo, remote = Path(state.data_repo), Path(state.dvc_remote)
    committed = {e["batch_md5"]: e for e in _head_manifest(repo)}
    for path, b in zip(landed, batches, strict=True):
        if _ingested(path).exists():
            assert b["md5"] in committed, f"{path.name} archived but not committed at HEAD"
            assert _batch_pushed(repo, remote, committed[b["md5"]]), f"{path.name} archived but not pushed"


CASES = {
    # crash points, in the order the first attempt and then each retry hit them; number of batches
    "after_parquet": (["ingest.after_parquet"], 1),
    "after_dvc_add": (["ingest.after_dvc_add"], 1),
    "after_manifest": (["ingest.after_manifest"], 1),
    "after_commit": (["ingest.after_commit"], 1),
    "after_push": (["ingest.after_push"], 1),
    "retry_dies_too": (["ingest.after_manifest", "ingest.after_commit"], 1),
    "second_batch_after_manifest": (["ingest.after_manifest@2"], 2),
    "second_batch_after_commit": (["ingest.after_commit@2"], 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_crash_then_retry_loses_nothing_and_doubles_nothing(state, case):
    from include.ingestion import commit_validated
    from include.versioning import DataRepo

    points, n_batches = CASES[case]
    repo, remote = Path(state.data_repo), Path(state.dvc_remote)
    DataRepo().ensure()
    batches, landed = _land(state, list(range(n_batches)))

    for point in points:
        run_until_crash(CHILD, point, json.dumps(batches), DATASET)
        _assert_archived_only_if_durable(state, landed, batches)

    t0 = time.perf_counter()
    extra = commit_validated(batches, DATASET)
    recover_s = time.perf_counter() - t0

    manifest = _head_manifest(repo)
    assert sorted(e["batch_md5"] for e in manifest) == sorted(b["md5"] for b in batches), (
        f"{case}: HEAD has batches {[e['batch'] for e in manifest]}, landed {[p.name for p in landed]}"
    )
    commits = _git(repo, "log", "--format=%H").split()
    assert len(commits) == 1 + n_batches, f"{case}: {len(commits)} commits for {n_batches} batch(es)"
    assert _git(repo, "status", "--porcelain").strip() == "", f"{case}: uncommitted leftovers"
    assert _head_pushed(repo, remote), f"{case}: HEAD's data is not in the DVC remote"
    for path in landed:
        assert not path.exists() and _ingested(path).exists(), f"{case}: {path.name} not archived"

    assert extra is not None, f"{case}: the retry found the batch committed but announced nothing"
    assert extra["dvc_rev"] == commits[0] and extra["dataset"] == DATASET
    assert extra["rows"] == sum(b["rows"] for b in batches)

    from include.ingestion import confirm_announced

    confirm_announced(extra)  # what the DAG does once Airflow has recorded the event
    assert commit_validated(batches, DATASET) is None, f"{case}: rev {extra['dvc_rev'][:10]} announced twice"
    assert _git(repo, "log", "--format=%H").split() == commits
    print(f"\nCHAOS ingest {case}: lost 0, duplicate commits 0, recovered in {recover_s:.2f}s")


def test_relanded_batch_after_a_crash_is_not_committed_twice(state):
    """The same file landed again after a crash-and-retry: no commit, no announcement."""
    from include.ingestion import commit_validated, confirm_announced

    repo = Path(state.data_repo)
    batches, _ = _land(state, [0])
    run_until_crash(CHILD, "ingest.after_commit", json.dumps(batches), DATASET)
    confirm_announced(commit_validated(batches, DATASET))
    commits = _git(repo, "log", "--format=%H").split()

    again, _ = _land(state, [0])
    assert commit_validated(again, DATASET) is None
    assert _git(repo, "log", "--format=%H").split() == commits
