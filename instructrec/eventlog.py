"""Append-only, crash-durable event logs (feedback events, served impressions).

Each writing process appends JSON lines to a segment file of its own
(`<prefix>-<utc start>-<pid>-<rand>.jsonl`), flushes and fsyncs before it
returns, so an acknowledged event survives a crash of the process. Segments
are never rewritten; readers skip a torn last line (a crash mid-write of an
event that was never acknowledged). Idempotency on `event_id` is the
writer's: `append` of an id already in any segment is a no-op.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path


class EventLog:
    def __init__(self, directory: Path, prefix: str, key: str | None = None, seen: set[str] | None = None):
        """seen: keys already stored (default: read from this log's segments)."""
        self.directory, self.prefix, self.key = directory, prefix, key
        self._lock = threading.Lock()
        self._fh = None
        self._seen: set[str] = set()
        if key is not None:
            self._seen = seen if seen is not None else {str(r[key]) for r in self.read() if r.get(key) is not None}

    def _segment(self):
        if self._fh is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            path = self.directory / f"{self.prefix}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
            self._fh = path.open("ab")
            _fsync_dir(self.directory)  # the new file's name is durable too
        return self._fh

    def append(self, record: dict) -> bool:
        """Write one record durably; False (and nothing written) when its key was seen before."""
        line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self.key is not None:
                key = str(record[self.key])
                if key in self._seen:
                    return False
            fh = self._segment()
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
            if self.key is not None:
                self._seen.add(key)
        return True

    def __len__(self) -> int:
        return len(self._seen)

    def read(self) -> list[dict]:
        return list(iter_records(self.directory, self.prefix))

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class LogTail:
    """Reads what every process has appended to a log since the last call (complete lines only).

    How several service processes share one state: each tails the same segment
    files, so an event stored by any of them is seen by all, in segment order.
    """

    def __init__(self, directory: Path, prefix: str):
        self.directory, self.prefix = directory, prefix
        self._offsets: dict[Path, int] = {}
        self._lock = threading.Lock()

    def new_records(self) -> list[dict]:
        out: list[dict] = []
        with self._lock:
            for path in sorted(self.directory.glob(f"{self.prefix}-*.jsonl")):
                start = self._offsets.get(path, 0)
                if path.stat().st_size <= start:
                    continue
                with path.open("rb") as fh:
                    fh.seek(start)
                    data = fh.read()
                complete = data[: data.rfind(b"\n") + 1]  # a line still being written is read next time
                out += [json.loads(line) for line in complete.splitlines() if line.strip()]
                self._offsets[path] = start + len(complete)
        return out


def iter_records(directory: Path, prefix: str) -> Iterator[dict]:
    """Every complete record of every segment, oldest segment first."""
    for path in sorted(directory.glob(f"{prefix}-*.jsonl")):
        with path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn tail of a crash: never acknowledged
                if line.strip():
                    yield json.loads(line)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
