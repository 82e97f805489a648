"""Append-only, crash-durable event logs (feedback events, served impressions).

Each writing process appends JSON lines to a segment file of its own
(`<prefix>-<utc start>-<pid>-<rand>.jsonl`), flushes and fsyncs before it
returns, so an acknowledged event survives a crash of the process. Segments
are only ever rewritten by an erasure (instructrec.online.erasure), which holds the
directory's lock exclusively while appends hold it shared, and replaces a
segment whole: a writer whose segment was replaced starts a new one. Readers
skip a torn last line (a crash mid-write of an event that was never
acknowledged). Idempotency on `event_id` is the writer's: `append` of an id
already in any segment is a no-op.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = ".lock"  # in the log's directory: shared by appends, exclusive for an erasure


class StoreWriteError(OSError):
    """An event could not be stored (disk full, I/O error); nothing of it was kept."""


def _open_lock(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    return os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)


@contextmanager
def _flocked(fd: int, exclusive: bool) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def directory_lock(directory: Path, exclusive: bool) -> Iterator[None]:
    """flock on the directory's lock file: many appenders at once, or one rewriter alone."""
    fd = _open_lock(directory)
    try:
        with _flocked(fd, exclusive):
            yield
    finally:
        os.close(fd)


class EventLog:
    def __init__(self, directory: Path, prefix: str, key: str | None = None, seen: set[str] | None = None):
        """seen: keys already stored (default: read from this log's segments)."""
        self.directory, self.prefix, self.key = directory, prefix, key
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._lock_fd: int | None = None  # the directory's lock file, opened once: appends are the hot path
        self._path: Path | None = None
        self._seen: set[str] = set()
        if key is not None:
            self._seen = seen if seen is not None else {str(r[key]) for r in self.read() if r.get(key) is not None}

    def _segment(self) -> int:
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # replaced by an erasure: never append to it
            os.close(self._fd)
            self._fd = None
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            self._path = self.directory / f"{self.prefix}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            fsync_dir(self.directory)  # the new file's name is durable too
        return self._fd

    def append(self, record: dict) -> bool:
        """Write one record durably; False (and nothing written) when its key was seen before.

        Unbuffered: when a write or fsync fails (disk full), the segment is cut back to its last
        complete record and StoreWriteError is raised, so nothing unacknowledged is kept and nothing
        is left to be flushed later; the next append starts a new segment.
        """
        line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._lock_fd is None:
                self._lock_fd = _open_lock(self.directory)
            with _flocked(self._lock_fd, exclusive=False):
                return self._append(line, record)

    def _append(self, line: bytes, record: dict) -> bool:
        """append's body, under both locks."""
        if self.key is not None:
            key = str(record[self.key])
            if key in self._seen:
                return False
        fd = self._segment()
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            self._cut_back(fd, start)
            raise StoreWriteError(
                exc.errno, f"could not store the event in {self._path}: {exc.strerror}; nothing of it was kept"
            ) from exc
        if self.key is not None:
            self._seen.add(key)
        return True

    def _cut_back(self, fd: int, size: int) -> None:
        """Drop a partial record; a segment that cannot be cut keeps a torn tail, which readers skip."""
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError:
            pass
        os.close(fd)
        self._fd = None

    def __len__(self) -> int:
        return len(self._seen)

    def read(self) -> list[dict]:
        return list(iter_records(self.directory, self.prefix))

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._lock_fd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._lock_fd = None


class LogTail:
    """Reads what every process has appended to a log since the last call (complete lines only).

    How several service processes share one state: each tails the same segment
    files, so an event stored by any of them is seen by all, in segment order.
    """

    def __init__(self, directory: Path, prefix: str):
        self.directory, self.prefix = directory, prefix
        self._offsets: dict[Path, int] = {}
        self._inodes: dict[Path, int] = {}
        self._lock = threading.Lock()

    def rewritten(self) -> bool:
        """Whether a segment read before was replaced or removed since (an erasure): the offsets no longer hold,
        and what was read from it may include records that are gone; the reader must start over."""
        for path, inode in self._inodes.items():
            try:
                if path.stat().st_ino != inode:
                    return True
            except FileNotFoundError:
                return True
        return False

    def new_records(self) -> list[dict]:
        out: list[dict] = []
        with self._lock:
            for path in sorted(self.directory.glob(f"{self.prefix}-*.jsonl")):
                start = self._offsets.get(path, 0)
                if path.stat().st_size <= start:
                    continue
                with path.open("rb") as fh:
                    self._inodes[path] = os.fstat(fh.fileno()).st_ino
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


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
