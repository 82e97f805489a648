"""One stop signal stops a run, wherever it is.

Schedulers send one SIGTERM, then SIGKILL after a grace period (systemd, Kubernetes, a Prefect worker
cancelling a flow run), and SIGKILL skips every clean-up. So the first SIGTERM or SIGINT:

1. raises `StopSignal` in the main thread (inside a flow run Prefect's own handler comes first: it marks the
   flow run Crashed, then hands the signal on). The exception unwinds the run: the MLflow run is closed KILLED
   with the signal as its reason (adapters.tracking.pipeline_run), the last finished epoch's checkpoint is
   already on disk (written atomically after each epoch), the Prefect API server is stopped;
2. arms a watchdog that, `grace` seconds later, finishes the job if the unwinding has not: a long C++ call
   (torch) that returns only later, code that swallows the exception (a retry loop with a bare except), a stage
   stuck in a worker thread. It closes the open MLflow runs KILLED, marks their
   flow runs Crashed, terminates this process's children and exits.

The watchdog is woken through the signal's wakeup file descriptor, which the C-level handler writes at once:
it starts counting even while the main thread is inside a long C call and cannot run Python handlers yet.
A second signal exits at once where the handler runs (a second delivery of the first, which Prefect's own
handler makes, is not one); inside a long C call the grace period ends it. Exit status 128 + the signal's
number, as a shell reports a killed process. The one case this cannot reach is a C call that holds the GIL
for its whole length (no Python thread runs): only SIGKILL ends it; the library's long calls (torch, numpy,
ONNX Runtime) release the GIL.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from instructrec.errors import StopSignal

log = logging.getLogger("instructrec.stop")

GRACE_SECONDS = 5.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    return 128 + signum


@contextmanager
def stop_on_signal(grace: float = GRACE_SECONDS) -> Iterator[None]:
    """Install the handlers for the block (main thread only; elsewhere the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopper = _Stopper(grace)
    previous = {s: signal.signal(s, stopper.handle) for s in SIGNALS}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=stopper.watch, args=(read_fd,), name="stop-watchdog", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(write_fd)  # ends the watchdog's read, unless a signal has armed it


class _Stopper:
    def __init__(self, grace: float):
        self.grace, self.signum = grace, 0

    def handle(self, signum: int, frame) -> None:
        if self.signum:  # the second signal this handler sees: no more waiting
            _hard_exit(signum, "a second stop signal")
        self.signum = signum
        raise StopSignal(signum)

    def watch(self, read_fd: int) -> None:
        """Wait for the first stop signal's wakeup byte, then `grace` seconds. Later bytes are not counted as
        second signals: inside a flow run, Prefect's handler takes the first delivery and sends the signal to
        the process again (one byte more for one signal); a second signal proper reaches `handle`."""
        pipe = os.fdopen(read_fd, "rb", buffering=0)  # left open: a later signal's wakeup byte finds a reader
        while byte := pipe.read(1):
            if byte[0] in SIGNALS:
                break
        else:
            pipe.close()
            return  # the block ended without a stop signal
        signum = byte[0]
        time.sleep(self.grace)
        _hard_exit(signum, f"still running {self.grace:g} s after {signal.Signals(signum).name}")


_exiting = threading.Lock()
CLOSE_SECONDS = 2.0  # what closing the runs may take in a hard exit (a store that does not answer)


def _hard_exit(signum: int, why: str) -> None:
    """Close what the run left open (bounded), terminate the children, exit now (no interpreter clean-up).
    Once: a second caller (the handler while the watchdog is at it) exits at once."""
    status = exit_status(signum)
    if not _exiting.acquire(blocking=False):
        os._exit(status)
    name = signal.Signals(signum).name
    _say(f"stopping: {why}; closing the run and exiting")
    tracking = sys.modules.get("adapters.tracking")  # not imported: no run was opened (and no import now)
    if tracking is not None:
        closing = threading.Thread(
            target=_close_runs, args=(tracking, f"stopped by {name} ({why})"), name="stop-close", daemon=True
        )
        closing.start()
        closing.join(CLOSE_SECONDS)
    terminate_children()
    os._exit(status)


def _close_runs(tracking, reason: str) -> None:
    try:
        tracking.close_open_runs(reason)
    except Exception as exc:  # a store that does not answer must not keep the process alive
        _say(f"stopping: could not close the open runs: {exc}")


def _say(message: str) -> None:
    """Straight to stderr's descriptor: a signal handler may interrupt a write to sys.stderr."""
    try:
        os.write(2, f"{message}\n".encode())
    except OSError:
        pass


def children(pid: int | None = None) -> list[int]:
    """This process's descendants (Linux /proc), deepest first."""
    pid = os.getpid() if pid is None else pid
    by_parent: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        by_parent.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: list[int] = []

    def walk(p: int) -> None:
        for child in by_parent.get(p, []):
            walk(child)
            out.append(child)

    walk(pid)
    return out


def terminate_children(wait: float = 2.0) -> None:
    """SIGTERM every descendant, SIGKILL those still there after `wait` seconds."""
    pids = children()
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
