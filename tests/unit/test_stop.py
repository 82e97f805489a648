"""One stop signal ends a process wherever it is, also where the code it interrupts swallows the exception."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from instructrec.errors import StopSignal, stop_signal_of

SWALLOWING = textwrap.dedent("""
    import time
    from ops.stop import stop_on_signal

    def swallow_forever(say_ready):
        while True:  # retries that swallow every exception, StopSignal too: only the watchdog ends this
            try:
                if say_ready:
                    say_ready = False
                    print("ready", flush=True)  # inside the try: a signal sent on "ready" lands in it
                time.sleep(0.05)
            except BaseException:
                pass

    with stop_on_signal(grace=GRACE):
        say_ready = True
        while True:  # a signal between two inner tries (the loop's jump back) is swallowed here
            try:
                swallow_forever(say_ready)
            except BaseException:
                say_ready = False
""")
LOOPING = textwrap.dedent("""
    from instructrec.errors import StopSignal
    from ops.stop import stop_on_signal
    try:
        with stop_on_signal(grace=30.0):
            print("ready", flush=True)
            while True:
                pass
    except StopSignal as exc:
        print(f"unwound by {exc}", flush=True)
        raise SystemExit(128 + exc.signum)
""")


@pytest.fixture
def start():
    """Start a script that prints "ready"; whatever the test's outcome, nothing it started outlives it."""
    started: list[subprocess.Popen] = []

    def run(script: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_python_loop_unwinds_at_once_through_the_stop_signal_exception(start, sig):
    proc = start(LOOPING)
    sent = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 128 + sig and time.monotonic() - sent < 5
    assert f"unwound by {signal.Signals(sig).name}" in out


def test_a_run_that_swallows_the_stop_is_ended_by_the_watchdog_after_the_grace_period(start):
    proc = start(SWALLOWING.replace("GRACE", "1.0"))
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    took = time.monotonic() - sent
    assert proc.returncode == 128 + signal.SIGTERM and 1.0 <= took < 5, (proc.returncode, took, err)
    assert "still running 1 s after SIGTERM" in err


def test_a_second_signal_exits_at_once(start):
    proc = start(SWALLOWING.replace("GRACE", "600.0"))
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - sent < 5 and "a second stop signal" in err


def test_how_a_run_ended_tells_a_stop_from_a_failure():
    assert stop_signal_of(StopSignal(signal.SIGTERM)) == signal.SIGTERM
    assert stop_signal_of(KeyboardInterrupt()) == signal.SIGINT
    assert stop_signal_of(ValueError("boom")) is None
    assert stop_signal_of(SystemExit(1)) is None
