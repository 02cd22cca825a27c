"""One append-only JSONL record log for the stages' histories: gate decisions (``audit.jsonl``),
deploys and rollbacks (``deployments.jsonl``) and drift decisions (``drift/triggers.jsonl``).

One JSON object per line (keys sorted, values through :func:`include.jsonsafe.json_safe`),
appended under one lock, at most once per dedup key, read back by
:func:`include.jsonsafe.read_jsonl` (a torn line is skipped, the rest kept).

The lock is a ``<log>.lock`` file next to the log (``filelock``), held by one :class:`RecordLog`
object re-entrantly, so a caller can hold it around read -> decide -> append (two drift checks must
not both see "no recent retrain") while :meth:`RecordLog.append` takes it again inside.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from include.jsonsafe import json_safe, read_jsonl

LOCK_TIMEOUT_S = 600.0  # a writer holds the lock for one append, or one drift decision


class RecordLog:
    """An append-only JSONL file. ``key(record)`` names a record for deduplication (None: every
    record is appended; a key of None: that record is never a duplicate)."""

    def __init__(self, path: str | Path, key: Callable[[dict], Hashable | None] | None = None) -> None:
        from filelock import FileLock

        self.path = Path(path)
        self.key = key
        self.lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)

    def read(self) -> list[dict]:
        """Every record, oldest first; [] when the log does not exist yet."""
        return read_jsonl(self.path)

    def find(self, record: dict) -> dict | None:
        """The record already logged under ``record``'s key, if any."""
        k = self.key(record) if self.key else None
        if k is None:
            return None
        return next((old for old in self.read() if self.key(old) == k), None)

    def append(self, record: dict) -> tuple[dict, bool]:
        """``(the logged record, True)``, or ``(the earlier record with the same key, False)``."""
        record = json_safe(record)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            old = self.find(record)
            if old is not None:
                return old, False
            with self.path.open("ab") as fh:
                # a write torn by a crash must not swallow this record into its line
                if fh.tell() and not _ends_with_newline(self.path):
                    fh.write(b"\n")
                fh.write(json.dumps(record, sort_keys=True).encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        return record, True


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def keyed_by(*fields: str) -> Callable[[dict], tuple | None]:
    """A dedup key of ``fields``; a record lacking the first one (e.g. no run key) has none."""

    def key(record: dict) -> tuple | None:
        return tuple(record.get(f) for f in fields) if record.get(fields[0]) else None

    return key


def _reports_log(relative: str, key: Callable[[dict], Any] | None, path: str | Path | None, s: Any) -> RecordLog:
    if path is None:
        if s is None:
            from include.config import settings

            s = settings()
        path = s.reports_dir / relative
    return RecordLog(path, key)


# The three logs' places, for their writers and their readers (the UI, lineage, the CLI). ``path``
# overrides the place (tests); ``s``: the Settings to take ``reports_dir`` from (default: current).

def gate_audit_log(path: str | Path | None = None, *, s: Any = None) -> RecordLog:
    """``<reports_dir>/audit.jsonl``: one line per gate decision (``decision_id``)."""
    return _reports_log("audit.jsonl", keyed_by("decision_id"), path, s)


def deploy_audit_log(path: str | Path | None = None, *, s: Any = None) -> RecordLog:
    """``<reports_dir>/deployments.jsonl``: deploys, canary verdicts, rollbacks (every event kept)."""
    return _reports_log("deployments.jsonl", None, path, s)


def drift_trigger_log(path: str | Path | None = None, *, s: Any = None) -> RecordLog:
    """``<reports_dir>/drift/triggers.jsonl``: one drift decision per (run key, model)."""
    return _reports_log("drift/triggers.jsonl", keyed_by("run_key", "model_name"), path, s)
