"""The feedback store: append-only, idempotent on event_id, durable once acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime

import polars as pl

from instructrec.online.eventlog import EventLog, iter_records
from instructrec.online.feedback import (
    FEEDBACK_LOG,
    IMPRESSION_LOG,
    append_events,
    online_users,
    read_impressions,
    read_store,
)


def _event(event_id: str, **over) -> dict:
    return {
        "event_id": event_id,
        "user_id": "u1",
        "item_id": "i1",
        "kind": "like",
        "text": None,
        "model_version": "1",
        "arm": "champion",
        "request_id": "r1",
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        **over,
    }


def test_append_is_idempotent_on_event_id_also_after_a_restart(tmp_path):
    log = EventLog(tmp_path, FEEDBACK_LOG, key="event_id")
    assert log.append(_event("e1")) is True
    assert log.append(_event("e1", kind="dislike")) is False
    log.close()
    restarted = EventLog(tmp_path, FEEDBACK_LOG, key="event_id")
    assert restarted.append(_event("e1")) is False and restarted.append(_event("e2")) is True
    assert [r["event_id"] for r in restarted.read()] == ["e1", "e2"]
    assert read_store(tmp_path)["kind"].to_list() == ["like", "like"]


def test_segments_are_never_rewritten(tmp_path):
    first = EventLog(tmp_path, FEEDBACK_LOG, key="event_id")
    first.append(_event("e1"))
    first.close()
    (segment,) = tmp_path.glob(f"{FEEDBACK_LOG}-*.jsonl")
    before = segment.read_bytes()
    second = EventLog(tmp_path, FEEDBACK_LOG, key="event_id")
    second.append(_event("e2"))
    second.close()
    assert segment.read_bytes() == before and len(list(tmp_path.glob(f"{FEEDBACK_LOG}-*.jsonl"))) == 2


def test_a_torn_last_line_from_a_crash_is_skipped(tmp_path):
    log = EventLog(tmp_path, FEEDBACK_LOG, key="event_id")
    log.append(_event("e1"))
    log.close()
    (segment,) = tmp_path.glob(f"{FEEDBACK_LOG}-*.jsonl")
    with segment.open("ab") as fh:
        fh.write(b'{"event_id": "e2", "user_')
    assert [r["event_id"] for r in iter_records(tmp_path, FEEDBACK_LOG)] == ["e1"]


def test_an_acknowledged_event_survives_a_killed_process(tmp_path):
    code = f"""
import sys
from instructrec.online.eventlog import EventLog
log = EventLog(__import__('pathlib').Path({str(tmp_path)!r}), 'events', key='event_id')
for i in range(50):
    log.append({{'event_id': f'e{{i}}', 'n': i}})
print('acked', flush=True)
sys.stdin.read()  # wait to be killed, file still open
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "acked"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [r["n"] for r in iter_records(tmp_path, "events")] == list(range(50))


def test_store_reads_batch_files_and_service_segments_together(tmp_path):
    append_events(
        tmp_path,
        pl.DataFrame([_event("b1")]).with_columns(
            pl.col("timestamp").str.to_datetime(time_zone="UTC"), pl.col("text").cast(pl.String)
        ),
    )
    EventLog(tmp_path, FEEDBACK_LOG, key="event_id").append(
        _event("s1", kind="instruction", item_id=None, text="scary")
    )
    store = read_store(tmp_path)
    assert store["event_id"].to_list() == ["b1", "s1"]
    assert store.schema["timestamp"] == pl.Datetime("us", "UTC")


def test_online_users_sum_each_users_impressions_likes_dislikes_and_errors_per_arm_and_version(tmp_path):
    imp = EventLog(tmp_path, IMPRESSION_LOG)
    now = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
    for rid, user, arm, version, items, extra in [
        ("r1", "u1", "champion", "1", ["a", "b", "c"], {"latency_ms": 12.0}),
        ("r4", "u1", "champion", "1", ["f"], {}),  # an old record without latency or error fields
        ("r5", "u3", "champion", "1", [], {"error": True, "latency_ms": 900.0}),  # failed after its arm was chosen
        ("r2", "u2", "challenger", "2", ["a", "d"], {"latency_ms": 20.0}),
        ("r3", "u2", "challenger", "3", ["e"], {}),  # another challenger version
    ]:
        imp.append(
            {
                "request_id": rid,
                "user_id": user,
                "arm": arm,
                "model_version": version,
                "items": items,
                "instruction": None,
                "timestamp": now,
                **extra,
            }
        )
    fb = EventLog(tmp_path, FEEDBACK_LOG, key="event_id")
    fb.append(_event("e1", request_id="r1", item_id="a"))
    fb.append(_event("e2", request_id="r1", item_id="a", kind="more_like_this"))  # same item: one like
    fb.append(_event("e3", request_id="r2", item_id="d", kind="dislike"))
    fb.append(_event("e4", request_id="r3", item_id="e"))
    fb.append(_event("e5", request_id="r4", item_id="f"))
    arms = online_users(read_impressions(tmp_path), read_store(tmp_path), {"champion": "1", "challenger": "2"})
    champion, challenger = arms["champion"], arms["challenger"]
    # users sorted by id: u1 (4 shown, 2 liked over 2 requests), u3 (one failed request, nothing shown)
    assert champion.impressions.tolist() == [4, 0] and champion.likes.tolist() == [2, 0]
    assert champion.requests.tolist() == [2, 1] and champion.errors.tolist() == [0, 1]
    assert champion.latency_ms.tolist() == [12.0]  # failed requests and unrecorded latencies are left out
    assert challenger.impressions.tolist() == [2] and challenger.likes.tolist() == [0]
    assert challenger.dislikes.tolist() == [1] and challenger.counts().users == 1
    assert json.loads(next(tmp_path.glob("impressions-*.jsonl")).read_text().splitlines()[0])["items"] == [
        "a",
        "b",
        "c",
    ]


FULL_DISK = r"""
import json, resource, signal, sys
from pathlib import Path
from instructrec.online.eventlog import EventLog, StoreWriteError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
log = EventLog(Path(sys.argv[1]), "events", key="event_id")
resource.setrlimit(resource.RLIMIT_FSIZE, (200, resource.RLIM_INFINITY))  # no file may grow past 200 bytes
acked, failed = [], []
for i in range(12):
    try:
        if log.append({"event_id": str(i), "pad": "x" * 30}):
            acked.append(str(i))
    except StoreWriteError as exc:
        failed.append(str(i))
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # space freed
retried = [i for i in failed if log.append({"event_id": i, "pad": "x" * 30})]
again = [i for i in failed if log.append({"event_id": i, "pad": "x" * 30})]
print(json.dumps({"acked": acked, "failed": failed, "retried": retried, "again": again}))
"""


def test_a_failed_write_keeps_the_log_valid_and_stores_only_what_was_acknowledged(tmp_path):
    """A real write failure (the OS's file-size limit, as a full disk), in a child process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert r["failed"] and r["acked"] and r["retried"] == r["failed"] and r["again"] == []
    for segment in tmp_path.glob("events-*.jsonl"):  # every line whole: the failed writes left nothing behind
        assert segment.read_bytes().endswith(b"\n") or segment.stat().st_size == 0
        [json.loads(line) for line in segment.read_text().splitlines()]
    stored = [rec["event_id"] for rec in iter_records(tmp_path, "events")]
    assert sorted(stored, key=int) == sorted(r["acked"] + r["retried"], key=int)  # each acknowledged once, nothing else
