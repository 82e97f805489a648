"""Erasing one user from the feedback store (a data subject's request), safely for everyone else's data.

The store is append-only for every other purpose, so erasure is the one rewrite: under the directory's
exclusive lock (appends wait), each file that holds the user is copied without the user's records, fsynced
and renamed over the original, one file at a time; files without the user are not touched. A crash leaves
each file either whole-old or whole-new, and erasing again finishes the job (it is idempotent). A service
process whose segment was replaced opens a new one for its next append; its readers notice the replacement
and rebuild their state (instructrec.online.eventlog).

The audit trail is its own append-only log: which user (as a SHA-256 of the id, so the trail does not
keep the id it erased), when, by whom, and how many records left each log.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from instructrec.data import schema
from instructrec.online.eventlog import EventLog, directory_lock, fsync_dir, iter_records
from instructrec.online.feedback import FEEDBACK_LOG, IMPRESSION_LOG, STORE_GLOB

ERASURE_LOG = "erasures"


@dataclass(frozen=True)
class Erasure:
    erasure_id: str
    user_sha256: str
    requested_by: str  # "cli" or "api", and who where known
    timestamp: str
    events_removed: int
    impressions_removed: int
    files_rewritten: int


def user_digest(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()


def erase_user(feedback_dir: Path, user_id: str, requested_by: str) -> Erasure:
    """Remove every feedback event and impression of `user_id`, then record the erasure in the audit log."""
    with directory_lock(feedback_dir, exclusive=True):
        events, files = _erase_from_logs(feedback_dir, FEEDBACK_LOG, user_id)
        impressions, more = _erase_from_logs(feedback_dir, IMPRESSION_LOG, user_id)
        batch_events, batch_files = _erase_from_batches(feedback_dir, user_id)
    erasure = Erasure(
        erasure_id=uuid.uuid4().hex,
        user_sha256=user_digest(user_id),
        requested_by=requested_by,
        timestamp=datetime.now(UTC).isoformat(),
        events_removed=events + batch_events,
        impressions_removed=impressions,
        files_rewritten=files + more + batch_files,
    )
    EventLog(feedback_dir, ERASURE_LOG).append(asdict(erasure))  # after the data is gone: the trail never over-claims
    return erasure


def erasures(feedback_dir: Path) -> list[dict]:
    """The audit trail, oldest first."""
    return list(iter_records(feedback_dir, ERASURE_LOG))


def _erase_from_logs(directory: Path, prefix: str, user_id: str) -> tuple[int, int]:
    removed = rewritten = 0
    for path in sorted(directory.glob(f"{prefix}-*.jsonl")):
        kept: list[bytes] = []
        dropped = 0
        with path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n") or not line.strip():
                    continue  # a torn tail was never acknowledged: the copy leaves it out
                if json.loads(line).get(schema.USER) == user_id:
                    dropped += 1
                else:
                    kept.append(line)
        if dropped:
            _replace(path, b"".join(kept))
            removed, rewritten = removed + dropped, rewritten + 1
    return removed, rewritten


def _erase_from_batches(directory: Path, user_id: str) -> tuple[int, int]:
    removed = rewritten = 0
    for path in sorted(directory.glob(STORE_GLOB)):
        batch = pl.read_parquet(path)
        kept = batch.filter(pl.col(schema.USER) != user_id)
        if kept.height < batch.height:
            tmp = path.with_name(f".{path.name}.erasing")
            kept.write_parquet(tmp)
            _sync_and_rename(tmp, path)
            removed, rewritten = removed + batch.height - kept.height, rewritten + 1
    return removed, rewritten


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.erasing")  # outside the segment glob: readers never see it
    tmp.write_bytes(data)
    _sync_and_rename(tmp, path)


def _sync_and_rename(tmp: Path, path: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
