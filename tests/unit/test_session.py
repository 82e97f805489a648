"""Session state folded from feedback records, and the log tail that shares it between processes."""

import json
from datetime import UTC, datetime, timedelta

from instructrec.online.eventlog import EventLog, LogTail
from instructrec.serving.session import SessionBook


def ev(event_id, kind, item=None, text=None, user="u1", ts="2026-01-01T00:00:00+00:00"):
    return {"event_id": event_id, "user_id": user, "kind": kind, "item_id": item, "text": text, "timestamp": ts}


def test_likes_dislikes_and_requests_fold_into_a_session():
    book = SessionBook(max_items=3)
    book.extend(
        [
            ev("1", "like", "a"),
            ev("2", "more_like_this", "b"),
            ev("3", "dislike", "c"),
            ev("4", "instruction", text="something funny"),
            ev("5", "like", "c"),
        ]
    )
    s = book.get("u1")
    assert s.liked == ["a", "b", "c"] and s.disliked == [] and s.judged == {"a", "b", "c"}
    assert s.request == "something funny"
    book.apply(ev("5", "dislike", "a"))  # an event id seen before is ignored
    assert book.get("u1").liked == ["a", "b", "c"]
    book.extend([ev("6", "like", "d"), ev("7", "less_like_this", "b")])
    assert book.get("u1").liked == ["c", "d"] and book.get("u1").disliked == ["b"]  # bounded, most recent kept
    assert book.get("nobody") is None and len(book) == 1


def test_a_request_stands_until_it_expires():
    book = SessionBook()
    book.apply(ev("1", "instruction", text="westerns", ts="2026-01-01T12:00:00+00:00"))
    s = book.get("u1")
    noon = datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert s.standing_request(noon + timedelta(minutes=29), timedelta(minutes=30)) == "westerns"
    assert s.standing_request(noon + timedelta(minutes=31), timedelta(minutes=30)) is None


def test_a_log_tail_sees_every_writer_and_never_a_half_written_line(tmp_path):
    a, b = EventLog(tmp_path, "events"), EventLog(tmp_path, "events")
    tail = LogTail(tmp_path, "events")
    a.append({"n": 1})
    b.append({"n": 2})
    assert sorted(r["n"] for r in tail.new_records()) == [1, 2]
    assert tail.new_records() == []
    torn = tmp_path / "events-99999999T000000000000-1-abcdef.jsonl"
    torn.write_bytes(b'{"n": 3}\n{"n": ')
    assert [r["n"] for r in tail.new_records()] == [3]
    with torn.open("ab") as fh:
        fh.write(b"4}\n")
    assert [r["n"] for r in tail.new_records()] == [4]
    a.append({"n": 5})
    assert [r["n"] for r in tail.new_records()] == [5] and json.loads(torn.read_text().splitlines()[1]) == {"n": 4}
