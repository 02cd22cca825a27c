"""The stages' append-only JSONL logs: the one reader (include/jsonsafe.read_jsonl) and the one writer
(include/recordlog.RecordLog: file lock, dedup key)."""

from __future__ import annotations

from include.jsonsafe import read_jsonl


def test_a_torn_or_foreign_line_is_skipped_and_the_rest_kept(tmp_path, caplog):
    log = tmp_path / "deployments.jsonl"
    log.write_text('{"event": "deployed", "version": "1"}\n[1, 2]\n\n{"event": "rolled_back", "version": "2"}\n'
                   '{"event": "depl')  # the last write was cut by a crash
    assert [r["event"] for r in read_jsonl(log)] == ["deployed", "rolled_back"]
    assert sum("not a JSON object" in r.message for r in caplog.records) == 2  # the list and the torn line
    assert read_jsonl(tmp_path / "absent.jsonl") == []


# ------------------------------------------------------------------------- the one record log

_WRITER = """
import sys
from include.recordlog import RecordLog, keyed_by
log = RecordLog(sys.argv[1], keyed_by("id"))
for i in range(40):
    log.append({"id": f"k{i % 20}", "writer": sys.argv[2]})
"""


def test_concurrent_writers_append_each_key_once(tmp_path):
    import subprocess
    import sys

    from include.recordlog import RecordLog

    path = tmp_path / "audit.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n)]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    ids = [r["id"] for r in RecordLog(path).read()]
    assert sorted(ids) == sorted(f"k{i}" for i in range(20)), ids  # 160 appends, 20 keys
    assert len(path.read_text().splitlines()) == 20  # and no torn line the reader skipped


def test_append_after_a_torn_line_keeps_the_new_record_whole(tmp_path):
    from include.recordlog import RecordLog, keyed_by

    path = tmp_path / "triggers.jsonl"
    path.write_text('{"run_key": "a", "model_name": "m"}\n{"run_key": "b", "mod')  # a crash mid-write
    log = RecordLog(path, keyed_by("run_key", "model_name"))
    rec, written = log.append({"run_key": "c", "model_name": "m", "share": float("nan")})
    assert written and rec["share"] is None  # through json_safe: strict JSON
    assert [r["run_key"] for r in log.read()] == ["a", "c"]
    assert log.append({"run_key": "a", "model_name": "m", "other": 1}) == ({"run_key": "a", "model_name": "m"}, False)
    assert log.append({"run_key": None, "model_name": "m"})[1] and log.append({"run_key": None, "model_name": "m"})[1]


def test_the_lock_is_reentrant_for_read_decide_append(tmp_path):
    from include.recordlog import RecordLog

    log = RecordLog(tmp_path / "deployments.jsonl")
    with log.lock:
        seen = len(log.read())
        log.append({"event": "deployed", "seen": seen})  # takes the same lock again: no deadlock
    assert log.read() == [{"event": "deployed", "seen": 0}]
