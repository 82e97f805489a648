"""Erasure of one user from the append-only feedback store: the user's records go, nobody else's change."""

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import polars as pl

from instructrec.data import schema
from instructrec.online.erasure import erase_user, erasures, user_digest
from instructrec.online.eventlog import EventLog, LogTail
from instructrec.online.feedback import FEEDBACK_LOG, IMPRESSION_LOG, append_events, read_impressions, read_store


def _event(n: int, user: str) -> dict:
    return {
        schema.EVENT_ID: f"e{n}",
        schema.USER: user,
        schema.ITEM: f"i{n % 7}",
        schema.KIND: "like",
        schema.TEXT: None,
        schema.MODEL_VERSION: "1",
        schema.ARM: "champion",
        schema.REQUEST_ID: f"r{n}",
        schema.TIMESTAMP: datetime.now(UTC).isoformat(),
    }


def _impression(n: int, user: str) -> dict:
    return {
        schema.REQUEST_ID: f"r{n}",
        schema.USER: user,
        schema.ARM: "champion",
        schema.MODEL_VERSION: "1",
        "items": [f"i{n % 7}"],
        "instruction": None,
        schema.TIMESTAMP: datetime.now(UTC).isoformat(),
    }


def _store(tmp_path):
    events = EventLog(tmp_path, FEEDBACK_LOG, key=schema.EVENT_ID)
    impressions = EventLog(tmp_path, IMPRESSION_LOG)
    for n in range(30):
        user = "alice" if n % 3 == 0 else f"u{n % 5}"
        events.append(_event(n, user))
        impressions.append(_impression(n, user))
    batch = pl.DataFrame([_event(100 + n, "alice" if n < 2 else "bob") for n in range(5)])
    append_events(tmp_path, batch.with_columns(pl.col(schema.TIMESTAMP).str.to_datetime(time_zone="UTC")))
    return events, impressions


def _others(frame: pl.DataFrame, user: str) -> list[dict]:
    return frame.filter(pl.col(schema.USER) != user).sort(schema.REQUEST_ID).to_dicts()


def test_erasure_removes_the_user_everywhere_and_leaves_everyone_else_byte_for_byte(tmp_path):
    events, impressions = _store(tmp_path)
    before_events, before_impressions = read_store(tmp_path), read_impressions(tmp_path)
    erasure = erase_user(tmp_path, "alice", requested_by="test")
    assert (erasure.events_removed, erasure.impressions_removed) == (10 + 2, 10)
    assert erasure.files_rewritten == 3  # one events segment, one impressions segment, one batch file
    after_events, after_impressions = read_store(tmp_path), read_impressions(tmp_path)
    assert "alice" not in set(after_events[schema.USER]) and "alice" not in set(after_impressions[schema.USER])
    assert _others(after_events, "alice") == _others(before_events, "alice")
    assert _others(after_impressions, "alice") == _others(before_impressions, "alice")
    trail = erasures(tmp_path)
    assert [t["user_sha256"] for t in trail] == [user_digest("alice")] and "alice" not in json.dumps(trail)
    again = erase_user(tmp_path, "alice", requested_by="test")  # idempotent: nothing left, a second audit record
    assert (again.events_removed, again.impressions_removed, again.files_rewritten) == (0, 0, 0)
    assert len(erasures(tmp_path)) == 2
    events.close()
    impressions.close()


def test_a_writer_whose_segment_was_replaced_appends_to_a_new_one_and_readers_start_over(tmp_path):
    events, _ = _store(tmp_path)
    tail = LogTail(tmp_path, FEEDBACK_LOG)
    assert len(tail.new_records()) == 30 and not tail.rewritten()
    erase_user(tmp_path, "alice", requested_by="test")
    assert tail.rewritten()  # its offsets point into a file that is gone
    assert events.append(_event(200, "carol"))  # the writer's old inode is unlinked: a new segment
    assert not events.append(_event(5, "u0"))  # ids seen before the erasure are still refused
    segments = sorted(tmp_path.glob(f"{FEEDBACK_LOG}-*.jsonl"))
    assert len(segments) == 2 and "carol" in segments[-1].read_text() and "carol" not in segments[0].read_text()
    assert set(read_store(tmp_path)[schema.USER]) >= {"carol", "bob"}


def test_an_erasure_while_another_process_appends_loses_and_duplicates_nothing(tmp_path):
    """A real second process appends other users' events the whole time; every acknowledged one survives once."""
    _store(tmp_path)
    writer = textwrap.dedent(f"""
        from datetime import UTC, datetime
        from instructrec.online.eventlog import EventLog
        log = EventLog(__import__("pathlib").Path({str(tmp_path)!r}), "events", key="event_id")
        for n in range(400):
            log.append({{"event_id": f"w{{n}}", "user_id": f"w{{n % 9}}", "item_id": "i1", "kind": "like",
                        "text": None, "model_version": "1", "arm": "champion", "request_id": f"q{{n}}",
                        "timestamp": datetime.now(UTC).isoformat()}})
            if n % 40 == 0:
                log.append({{"event_id": f"a{{n}}", "user_id": "alice", "item_id": "i1", "kind": "like",
                            "text": None, "model_version": "1", "arm": "champion", "request_id": f"qa{{n}}",
                            "timestamp": datetime.now(UTC).isoformat()}})
        print("done")
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    rounds = 0
    while proc.poll() is None or rounds == 0:
        erase_user(tmp_path, "alice", requested_by="test")
        rounds += 1
    assert proc.communicate()[0].strip() == "done"
    store = read_store(tmp_path)
    written = store.filter(pl.col(schema.EVENT_ID).str.starts_with("w"))
    assert written.height == 400 and written[schema.EVENT_ID].n_unique() == 400
    assert rounds >= 1 and store.height == written.height + 20 + 3 + (store[schema.USER] == "alice").sum()


def test_forget_on_the_command_line_prints_the_audit_record(tmp_path, monkeypatch, capsys):
    from ops.cli import main

    monkeypatch.setenv("INSTRUCTREC_HOME", str(tmp_path))
    _store(tmp_path / "feedback")
    assert main(["forget", "--user-id", "alice"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["events_removed"] == 12 and printed["requested_by"].startswith("cli:")
    assert erasures(tmp_path / "feedback")[0]["erasure_id"] == printed["erasure_id"]
    assert "alice" not in set(read_store(tmp_path / "feedback")[schema.USER])
