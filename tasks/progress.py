"""Progress a log file can show: no progress bar there (a bar is for a terminal), so lines instead.

Training stages write one line per epoch and, inside a long epoch, one every STEP_LINE_SECONDS
(tasks.training.EpochLogger). Every stage of the training flow also runs under `heartbeat`: where a stage
has said nothing for HEARTBEAT_SECONDS (embedding texts, ONNX quantisation, an evaluation pass), it writes
that it is still at work and for how long, so `make run > log` shows a line at least every minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

STEP_LINE_SECONDS = 30.0  # within an epoch, a progress line at most this often
HEARTBEAT_SECONDS = 45.0  # a stage silent this long says it is still at work

_last_line = [time.time()]  # when this process last wrote a progress line (shared by every writer)


def say(line: str, logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
    _last_line[0] = time.time()
    (logger or progress_logger()).info(line)


def seconds_since_last_line() -> float:
    return time.time() - _last_line[0]


def progress_logger() -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger where there is one (the console and the Prefect UI), else this module's, writing
    to stderr: a DDP rank's process on the Ray engine (its lines go to Ray's worker log,
    /tmp/ray/session_latest/logs/worker-*.err)."""
    try:
        return get_run_logger()
    except MissingContextError:
        log = logging.getLogger(__name__)
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO)
        return log


def duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}m{sec:02d}s" if minutes else f"{sec}s"


@contextmanager
def heartbeat(stage: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """While the block runs, a line whenever no progress line has been written for `every` seconds."""
    logger, started, done = progress_logger(), time.time(), threading.Event()

    def beat() -> None:
        while not done.wait(min(every, max(every - seconds_since_last_line(), 1.0))):
            if seconds_since_last_line() >= every:
                say(f"{stage}: still at work, {duration(time.time() - started)} into the stage", logger)

    _last_line[0] = time.time()  # the stage's start counts as a line: the flow logs each task's start
    thread = threading.Thread(target=beat, name=f"heartbeat-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1.0)
