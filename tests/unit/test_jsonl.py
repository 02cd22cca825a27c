"""The one reader of the stages' append-only JSONL logs (include/jsonsafe.read_jsonl)."""

from __future__ import annotations

from include.jsonsafe import read_jsonl


def test_a_torn_or_foreign_line_is_skipped_and_the_rest_kept(tmp_path, caplog):
    log = tmp_path / "deployments.jsonl"
    log.write_text('{"event": "deployed", "version": "1"}\n[1, 2]\n\n{"event": "rolled_back", "version": "2"}\n'
                   '{"event": "depl')  # the last write was cut by a crash
    assert [r["event"] for r in read_jsonl(log)] == ["deployed", "rolled_back"]
    assert sum("not a JSON object" in r.message for r in caplog.records) == 2  # the list and the torn line
    assert read_jsonl(tmp_path / "absent.jsonl") == []
