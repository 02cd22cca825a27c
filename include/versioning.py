"""DVC-versioned datasets: a git + DVC data repo whose every commit is one dataset revision.

Layout of the data repo (``settings().data_repo``)::

    data/<dataset>/batch-<md5>.parquet   one file per ingested batch (DVC-tracked directory)
    data/<dataset>.dvc                   the DVC pointer (its md5 is the dataset md5)
    manifests/<dataset>.json             git-tracked list of ingested batches, in order

Why one file per batch: appending a batch adds one file, so ``dvc add`` only hashes the new file
and ``dvc push`` uploads only it; re-ingesting a batch is detected from the manifest by the batch's
content md5 and changes nothing. Readers merge batches in manifest order, last write wins per key
(a later batch may correct or label an earlier row).

DVC and git are driven through their CLIs under an inter-process file lock: DVC's own repo lock
fails instead of waiting, and two ingest tasks must never interleave add/commit/push.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from include.config import Settings, settings
from include.crashpoints import crash_point

log = logging.getLogger(__name__)


class DataRepoError(RuntimeError):
    """A git/DVC operation failed or a requested revision does not exist."""


class RevisionNotFound(DataRepoError):
    """The data rev or the dataset at that rev does not exist: no retry can make it appear."""


@dataclass(frozen=True)
class DatasetVersion:
    dataset: str
    dvc_rev: str
    md5: str
    rows: int
    batch_rows: int
    batches: int
    validation_id: str
    created: bool  # False when the batch was already in the dataset (idempotent re-run)

    def asset_extra(self) -> dict:
        extra = asdict(self)
        extra.pop("created")
        return extra


# Local refs in the data repo, never committed: HEAD as last pushed to the DVC remote, and the
# newest revision of each dataset whose `dataset` Asset event is known to be recorded.
PUSHED_REF = "refs/mlops/pushed"


def _announced_ref(dataset: str) -> str:
    return f"refs/mlops/announced/{dataset}"


def _git_env() -> dict[str, str]:
    env = os.environ.copy()
    env.setdefault("GIT_AUTHOR_NAME", "mlops-loop")
    env.setdefault("GIT_AUTHOR_EMAIL", "mlops-loop@localhost")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_NO_UPDATER"] = "1"
    return env


class DataRepo:
    def __init__(self, s: Settings | None = None):
        self.settings = s or settings()
        self.path = Path(self.settings.data_repo)

    # -- plumbing -----------------------------------------------------------------------------
    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(args)
        if cmd[0] == "dvc":
            cmd = [sys.executable, "-m", "dvc", *cmd[1:]]
        proc = subprocess.run(cmd, cwd=self.path, env=_git_env(), capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise DataRepoError(
                f"`{' '.join(args)}` failed in {self.path} (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise every mutating DVC/git operation on this repo across processes."""
        from filelock import FileLock, Timeout

        lock_dir = self.settings.state_dir / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        repo_id = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:12]
        lock = FileLock(str(lock_dir / f"data-repo-{repo_id}.lock"))
        try:
            lock.acquire(timeout=self.settings.lock_timeout_s)
        except Timeout as err:
            raise DataRepoError(
                f"another ingest holds the data-repo lock for more than {self.settings.lock_timeout_s}s"
            ) from err
        try:
            yield
        finally:
            lock.release()

    def head(self) -> str:
        return self._run("git", "rev-parse", "HEAD").stdout.strip()

    # -- setup --------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the repo and its DVC remote if missing; make the remote match config. Idempotent."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / ".git").exists():
            self._run("git", "init", "-q", "-b", "main")
        if not (self.path / ".dvc").exists():
            self._run("dvc", "init", "-q")
            self._run("dvc", "config", "core.autostage", "true")
        remote = self.settings.dvc_remote
        if not remote.startswith(("s3://", "http://", "https://")):
            Path(remote).mkdir(parents=True, exist_ok=True)
        # --local keeps machine-specific endpoints out of the committed config
        self._run("dvc", "remote", "add", "--local", "-f", "-d", "storage", remote)
        if remote.startswith("s3://") and self.settings.s3_endpoint:
            self._run("dvc", "remote", "modify", "--local", "storage", "endpointurl", self.settings.s3_endpoint)
        if self._run("git", "rev-parse", "--verify", "-q", "HEAD", check=False).returncode != 0:
            self._run("git", "add", "-A")
            self._run("git", "commit", "-q", "-m", "Initialise data repo")

    # -- datasets -----------------------------------------------------------------------------
    def _manifest_path(self, dataset: str) -> Path:
        return self.path / "manifests" / f"{dataset}.json"

    def manifest(self, dataset: str) -> list[dict]:
        p = self._manifest_path(dataset)
        return json.loads(p.read_text()) if p.exists() else []

    def _dataset_md5(self, dataset: str) -> str:
        import yaml

        dvc_file = self.path / "data" / f"{dataset}.dvc"
        return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]

    # -- the commit protocol ------------------------------------------------------------------
    # One commit point: the git commit of the manifest. Everything before it (parquet written,
    # `dvc add`, manifest written or staged) is undone on the next entry; everything after it
    # (`dvc push`, archiving, announcing) is redone until it is done. So only the manifest AT
    # HEAD says which batches are in a dataset, and every step after the commit is idempotent.

    def _dataset_paths(self, dataset: str) -> list[str]:
        # data/.gitignore is shared by the datasets, but nothing else writes it between commits
        return [f"data/{dataset}.dvc", "data/.gitignore", f"manifests/{dataset}.json"]

    def _head_manifest(self, dataset: str) -> list[dict]:
        return json.loads(self._show("HEAD", f"manifests/{dataset}.json") or "[]")

    def _repair(self, dataset: str) -> None:
        """Undo an interrupted commit of ``dataset`` back to HEAD, and push HEAD if it never was.

        Runs under the lock, so any difference from HEAD is a leftover of a process that died.
        """
        paths = self._dataset_paths(dataset)
        dirty = self._run("git", "status", "--porcelain", "--untracked-files=all", "--", *paths).stdout.strip()
        if dirty:
            log.warning("undoing an interrupted commit of %s (uncommitted: %s)", dataset, dirty.replace("\n", "; "))
            self._run("git", "reset", "-q", "--", *paths)
            for rel in paths:
                if self._run("git", "cat-file", "-e", f"HEAD:{rel}", check=False).returncode == 0:
                    self._run("git", "checkout", "--", rel)
                else:
                    (self.path / rel).unlink(missing_ok=True)
        committed = {e["file"] for e in self._head_manifest(dataset)}
        data_dir = self.path / "data" / dataset
        stray = [p for p in data_dir.iterdir() if p.is_file() and p.name not in committed] if data_dir.exists() else []
        for p in stray:
            log.warning("removing %s: written by an interrupted commit, not in %s at HEAD", p.name, dataset)
            p.unlink()
        if committed and not all((data_dir / f).is_file() for f in committed):
            self._run("dvc", "checkout", "-q", f"data/{dataset}.dvc")
        self._push_head()

    def _push_head(self) -> None:
        """``dvc push`` unless HEAD is known to be pushed (a git ref remembers the last push)."""
        head = self.head()
        if self._run("git", "rev-parse", "--verify", "-q", PUSHED_REF, check=False).stdout.strip() == head:
            return
        self._run("dvc", "push", "-q")
        self._run("git", "update-ref", PUSHED_REF, head)

    def dataset_rev(self, dataset: str) -> str | None:
        """The newest commit that changed ``dataset`` (its revision; HEAD may be another dataset's)."""
        return self._run("git", "log", "-1", "--format=%H", "HEAD", "--",
                         f"manifests/{dataset}.json").stdout.strip() or None

    def rev_added(self, dataset: str, batch_md5: str) -> str | None:
        """The commit that added a batch, from git history (a sha cannot be written into its own commit)."""
        out = self._run("git", "log", "--reverse", "--format=%H", f"-S{batch_md5}", "HEAD", "--",
                        f"manifests/{dataset}.json").stdout.split()
        return out[0] if out else None

    def commit_batch(
        self, dataset: str, df, *, batch_md5: str, batch_name: str, validation_id: str
    ) -> DatasetVersion:
        """Add a validated batch to the dataset once: dvc add + git commit (the commit point) + dvc push.

        ``df`` is the batch, or a zero-argument callable returning it (read only when the batch is
        not committed yet: a retry may find its file already archived). On return the batch is in
        the dataset at HEAD and pushed, whatever an earlier attempt left behind.
        """
        with self.lock():
            self.ensure()
            self._repair(dataset)
            entries = self._head_manifest(dataset)
            if any(e["batch_md5"] == batch_md5 for e in entries):
                log.info("batch %s (md5 %s) is already in %s since %s: nothing to commit",
                         batch_name, batch_md5, dataset, (self.rev_added(dataset, batch_md5) or "?")[:10])
                return self._version(dataset, entries, created=False)
            if callable(df):
                df = df()
            data_dir = self.path / "data" / dataset
            data_dir.mkdir(parents=True, exist_ok=True)
            fname = f"batch-{batch_md5[:16]}.parquet"
            df.to_parquet(data_dir / fname, index=False)
            crash_point("ingest.after_parquet")
            self._run("dvc", "add", "-q", f"data/{dataset}")
            crash_point("ingest.after_dvc_add")
            entries.append({
                "batch_md5": batch_md5, "batch": batch_name, "file": fname, "rows": int(len(df)),
                "validation_id": validation_id,
            })
            mpath = self._manifest_path(dataset)
            mpath.parent.mkdir(parents=True, exist_ok=True)
            mpath.write_text(json.dumps(entries, indent=2) + "\n")
            self._run("git", "add", *self._dataset_paths(dataset))
            crash_point("ingest.after_manifest")
            self._run("git", "commit", "-q", "-m",
                      f"{dataset}: add batch {batch_name} ({len(df)} rows, validation {validation_id})")
            crash_point("ingest.after_commit")
            self._push_head()
            log.info("committed %s batch %s as %s and pushed to %s",
                     dataset, batch_name, self.head()[:10], self.settings.dvc_remote)
            return self._version(dataset, entries, created=True)

    def _version(self, dataset: str, entries: list[dict], *, created: bool) -> DatasetVersion:
        # A function of the revision only, so every attempt that announces it says the same thing.
        return DatasetVersion(
            dataset=dataset, dvc_rev=self.dataset_rev(dataset), md5=self._dataset_md5(dataset),
            rows=sum(e["rows"] for e in entries), batch_rows=entries[-1]["rows"], batches=len(entries),
            validation_id=entries[-1]["validation_id"], created=created,
        )

    # -- announcements ------------------------------------------------------------------------
    # A revision is announced (the `dataset` Asset event) by the Airflow task that committed it,
    # and Airflow records the event only when that task succeeds, after the library has returned.
    # So the library cannot mark it announced itself: a mark written before the return would be
    # a lost event if the worker died in between. The DAG confirms it from a downstream task,
    # once the event is durable; until then every attempt hands the extra out again.

    def announced(self, dataset: str, rev: str) -> bool:
        """True when ``rev`` of ``dataset``, or a newer revision of it, was confirmed announced."""
        mark = self._run("git", "rev-parse", "--verify", "-q", _announced_ref(dataset), check=False).stdout.strip()
        if not mark:
            return False
        return mark == rev or self._run("git", "merge-base", "--is-ancestor", rev, mark, check=False).returncode == 0

    def mark_announced(self, dataset: str, rev: str) -> None:
        """Record that the event for ``rev`` is durable; never moves the mark back to an older rev."""
        with self.lock():
            if not self.announced(dataset, rev):
                self._run("git", "update-ref", _announced_ref(dataset), rev)

    def resolve_rev(self, rev: str | None) -> str:
        """A full commit sha for ``rev`` ("latest"/None = HEAD); a clear error if it does not exist."""
        if not (self.path / ".git").exists():
            raise RevisionNotFound(f"no data repo at {self.path}: ingest a batch first")
        ref = "HEAD" if rev in (None, "", "latest") else rev
        proc = self._run("git", "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
        if proc.returncode != 0:
            recent = self._run("git", "log", "--format=%h %s", "-n", "5").stdout.strip()
            raise RevisionNotFound(
                f"data rev {rev!r} does not exist in the data repo {self.path}. Recent revs:\n{recent}"
            )
        return proc.stdout.strip()

    def lineage(self, dataset: str, rev: str | None) -> dict:
        """dvc_rev, md5 and the validation ids of the dataset as of ``rev``."""
        sha = self.resolve_rev(rev)
        manifest = self._show(sha, f"manifests/{dataset}.json")
        if manifest is None:
            raise RevisionNotFound(f"dataset {dataset!r} does not exist at data rev {sha[:10]}")
        import yaml

        entries = json.loads(manifest)
        md5 = yaml.safe_load(self._show(sha, f"data/{dataset}.dvc"))["outs"][0]["md5"]
        return {
            "dataset": dataset, "data_rev": sha, "data_md5": md5,
            "rows": sum(e["rows"] for e in entries),
            "validation_id": entries[-1]["validation_id"],
            "validation_ids": [e["validation_id"] for e in entries],
        }

    def _show(self, sha: str, path: str) -> str | None:
        proc = self._run("git", "show", f"{sha}:{path}", check=False)
        return proc.stdout if proc.returncode == 0 else None

    def load(self, dataset: str, rev: str | None, spec=None):
        """The dataset exactly as of ``rev`` (pulled from the DVC remote if not cached)."""
        import pandas as pd
        from dvc.api import DVCFileSystem

        sha = self.resolve_rev(rev)
        entries = json.loads(self._show(sha, f"manifests/{dataset}.json") or "null") or []
        if not entries:
            raise RevisionNotFound(f"dataset {dataset!r} does not exist at data rev {sha[:10]}")
        fs = DVCFileSystem(str(self.path), rev=sha)
        frames = []
        for e in entries:
            with fs.open(f"/data/{dataset}/{e['file']}", "rb") as fh:
                frames.append(pd.read_parquet(fh))
        df = pd.concat(frames, ignore_index=True)
        # Validated batches carry nullable Int64; downstream (sklearn, MLflow signatures) wants numpy.
        for col in df.columns:
            if str(df[col].dtype) == "Int64":
                df[col] = df[col].astype("float64" if df[col].isna().any() else "int64")
        if spec is not None:
            df = df.drop_duplicates(subset=[spec.key], keep="last").reset_index(drop=True)
        return df
