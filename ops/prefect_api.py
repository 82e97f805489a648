"""The Prefect API that a CLI command's flow runs talk to.

With PREFECT_API_URL set (a stack or a team server), that server. Otherwise the same ephemeral server
Prefect would start on first use (its own ASGI app under uvicorn, UI off), started here instead so that a
busy laptop and two runs at once on one home work:

- start-up of one home's server is serialised by a file lock: two servers migrating one SQLite database at
  once collide in alembic ("Online migration expected to match one row"); the second now starts on the
  migrated database;
- start-up waits PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (the CLI's default is 180 s) and is
  retried on a new port, so a machine whose cores are taken is slow, not broken;
- the server dies with the process that started it, also on kill -9 (the kernel's parent-death signal),
  so no orphaned server is left behind; it runs in its own session, so a stop signal sent to the whole
  process group reaches the run first, which then reports how it ended before the server stops.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

log = logging.getLogger("instructrec.prefect_api")

STARTUP_ATTEMPTS = 3
PR_SET_PDEATHSIG = 1


class ApiStartError(RuntimeError):
    """The ephemeral Prefect server did not answer in time, on every attempt."""


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the API URL; an ephemeral server started here lives exactly as long as the block (or the process)."""
    if given := _configured_url():
        yield given
        return
    home = Path(os.environ["PREFECT_HOME"])
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
    with _startup_lock(home):
        server, url = _start(timeout)
    os.environ["PREFECT_API_URL"] = url  # for Prefect's settings, and for the task runs' subprocesses
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):  # also where Prefect's settings were read before
            yield url
    finally:
        _drain_clients()
        os.environ.pop("PREFECT_API_URL", None)
        _stop(server)


def _drain_clients() -> None:
    """Send what Prefect's background workers still hold (logs, events) while the server still listens; at exit
    they would retry against a stopped server for a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10)


def _configured_url() -> str | None:
    """PREFECT_API_URL from the environment, or from Prefect's active settings (a test harness, a profile)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect" not in sys.modules:
        return None  # importing Prefect to ask would read its settings before the URL is known
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


@contextmanager
def _startup_lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".server-startup.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _start(timeout: float) -> tuple[subprocess.Popen, str]:
    for attempt in range(1, STARTUP_ATTEMPTS + 1):
        port = _free_port()
        # its own session: a stop signal sent to our process group (a terminal's Ctrl-C, `timeout`) must not take the
        # server away while the flow run still reports how it ended; it stops with us (`_stop`, or the death signal)
        server = subprocess.Popen(
            _command(port), env=_server_env(), preexec_fn=_die_with_parent, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}/api"
        if _healthy(server, url, timeout):
            return server, url
        _stop(server)
        log.warning("Prefect API server not up after %.0f s (attempt %d of %d)", timeout, attempt, STARTUP_ATTEMPTS)
    raise ApiStartError(
        f"the local Prefect API server did not start in {STARTUP_ATTEMPTS} x {timeout:.0f} s; the machine may be "
        "overloaded: raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or point PREFECT_API_URL at a "
        "running server (`instructrec stack up`)"
    )


def _command(port: int) -> list[str]:
    prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent  # type: ignore[union-attr, arg-type]
    return [
        *(sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent)),
        *("--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port)),
        *("--log-level", "error", "--lifespan", "on"),
    ]


def _server_env() -> dict[str, str]:
    """What Prefect gives its own ephemeral server: no UI, ephemeral mode."""
    return {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _healthy(server: subprocess.Popen, url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return False
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, however it dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
