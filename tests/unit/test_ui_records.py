"""include/ui/records.py reads the audit logs the loop writes: a rollback shows who did it."""

from __future__ import annotations

import json

from include.ui import records


def _write(path, *recs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_rollback_entries_name_the_user_who_triggered_them(state):
    _write(state.reports_dir / "deployments.jsonl",
           {"time": "2026-11-28T08:00:00Z", "event": "deployed", "model": "sessions_purchase", "version": "2",
            "previous_champion": "1", "trigger": {"user": "bob", "dag_run_id": "manual__1"}},
           # the shape deploy's rollback records: event, model, version, reason, serving, trigger
           {"time": "2026-11-28T08:05:00Z", "event": "rollback", "model": "sessions_purchase", "version": "2",
            "reason": "operator rollback", "serving": "1", "trigger": {"user": "alice", "dag_run_id": "manual__2"}},
           {"time": "2026-11-28T08:06:00Z", "event": "rolled_back", "model": "sessions_purchase", "version": "3",
            "reason": "smoke test failed", "serving": "1", "by": "carol"},
           {"time": "2026-11-28T08:07:00Z", "event": "rolled_back", "model": "sessions_purchase", "version": "4",
            "reason": "smoke test failed", "serving": "1"},
           # a manual rollback (the deploy DAG's rollback_to): version is where it went back to
           {"time": "2026-11-28T08:08:00Z", "event": "rolled_back", "model": "sessions_purchase", "version": "1",
            "from": "2", "automatic": False, "reason": "rollback_to v1 requested by dave", "serving": "1",
            "trigger": {"user": "dave", "dag_run_id": "manual__3"}})
    events = records.timeline("sessions")["events"]
    assert [e["kind"] for e in events] == ["rollback", "rollback", "rollback", "rollback", "deploy"]  # newest first
    manual, unattributed, carol, alice, deploy = events
    assert manual["summary"] == "sessions_purchase rolled back from v2 to v1: rollback_to v1 requested by dave"
    assert manual["detail"]["by"] == "dave"
    assert alice["detail"]["by"] == "alice" and alice["summary"].endswith(" by alice")
    assert "v2 rolled back: operator rollback; serving v1" in alice["summary"]
    assert carol["detail"]["by"] == "carol" and carol["summary"].endswith(" by carol")
    assert unattributed["detail"]["by"] is None and " by " not in unattributed["summary"]
    assert deploy["summary"] == "sessions_purchase v2 deployed (was v1) by bob"
