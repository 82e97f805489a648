"""The local operations stack: a Prefect server and a process worker, an MLflow tracking server (SQLite, or
PostgreSQL from Debian's package), every deployment of prefect.yaml and the failure automation.

`instructrec stack up` starts what is not running and records each process's pid; `instructrec stack down`
stops exactly those. The integration tests start their own stack on free ports in a temporary home.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from instructrec.config import Config
from instructrec.io import atomic_path, process_alive
from ops.environment import ENV_DEFAULTS

REPO = Path(__file__).resolve().parents[1]


class StackError(RuntimeError):
    """A component did not start; the message names it and the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuse_taken_port(name: str, port: int, setting: str) -> None:
    """A server whose port another process holds would fail only after its health wait: say so at once."""
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            raise StackError(
                f"{name} cannot start: 127.0.0.1:{port} is already taken by another process; "
                f"stop that process, or choose another port (--set {setting}=N)"
            )


@dataclass(frozen=True)
class Endpoints:
    prefect_api: str
    prefect_ui: str
    mlflow: str
    backend_store: str

    def client_env(self) -> dict[str, str]:
        """What a shell, a test or the service exports to use this stack."""
        return {"PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow}


class LocalPostgres:
    """A PostgreSQL cluster in a folder of the stack's, on loopback, trusting local connections.

    The server refuses to run as root, so as root it runs as Debian's `postgres` user.
    """

    user = database = "mlflow"

    def __init__(self, stack_dir: Path, port: int):
        self.port, self.bin = port, self._bindir()
        self.data_dir = stack_dir / "postgres"
        if os.geteuid() == 0:  # the postgres user may not traverse root's folders: Debian's place for clusters
            key = hashlib.sha256(str(stack_dir.resolve()).encode()).hexdigest()[:12]
            self.data_dir = Path("/var/lib/postgresql/instructrec") / key

    @staticmethod
    def _bindir() -> Path:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not found:
            raise StackError("PostgreSQL server not installed (Debian package `postgresql`): run `make system-deps`")
        if importlib.util.find_spec("psycopg2") is None:
            raise StackError("MLflow's PostgreSQL driver is missing: pip install 'instructrec-pipeline[postgres]'")
        return found[-1].parent

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, cwd="/")

    def start(self) -> int:
        """initdb on first use, start, create the database; returns the postmaster's pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for path in (self.data_dir.parent, self.data_dir):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            _check(
                self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust", "-E", "UTF8"), "initdb"
            )
        log = self.data_dir / "server.log"
        _check(
            self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "start",
                "-o",
                f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1",
            ),
            "pg_ctl start",
        )
        made = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        if made.returncode and "already exists" not in made.stderr:
            _check(made, "createdb")
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode:
        raise StackError(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}")


class Stack:
    """Start and stop the stack's processes; the state file lists their pids and endpoints."""

    def __init__(self, cfg: Config, repo: Path = REPO):
        self.cfg, self.repo = cfg, repo
        self.dir = cfg.paths.home / "stack"
        self.state_file = self.dir / "state.json"
        s = cfg.stack
        self.endpoints = Endpoints(
            prefect_api=f"http://127.0.0.1:{s.prefect_port}/api",
            prefect_ui=f"http://127.0.0.1:{s.prefect_port}",
            mlflow=f"http://127.0.0.1:{s.mlflow_port}",
            backend_store=(
                LocalPostgres(self.dir, s.postgres_port).uri
                if s.backend == "postgres"
                else f"sqlite:///{cfg.paths.home / 'mlflow.db'}"
            ),
        )
        if self.running():  # a stack that runs keeps its endpoints, whatever this config says
            self.endpoints = Endpoints(**self.state()["endpoints"])

    # -- state ---------------------------------------------------------------------------------------------------

    def state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {"pids": {}}

    def _record(self, name: str, pid: int) -> None:
        state = self.state()
        state["pids"][name] = pid
        state["endpoints"] = self.endpoints.__dict__
        with atomic_path(self.state_file) as tmp:
            tmp.write_text(json.dumps(state, indent=2))

    def running(self) -> dict[str, int]:
        return {name: pid for name, pid in self.state()["pids"].items() if process_alive(pid)}

    # -- processes -----------------------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {**ENV_DEFAULTS, **os.environ}
        env.pop("PREFECT_API_URL", None)
        env.update(
            {
                "PREFECT_HOME": str(self.dir / "prefect"),
                "INSTRUCTREC_HOME": str(self.cfg.paths.home),
                "INSTRUCTREC_REPO": str(self.repo),
                "MLFLOW_BACKEND": self.cfg.stack.backend,
            }
        )
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:  # a session of its own: stopping it stops its children (flow runs) too
            proc = subprocess.Popen(
                argv, env=env, cwd=self.repo, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._record(name, proc.pid)
        return proc

    def _wait_healthy(self, name: str, url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{name} exited with {proc.returncode}: {self._log_tail(name)}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise StackError(f"{name} not healthy at {url} after {timeout:.0f} s: {self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        log = self.dir / "logs" / f"{name}.log"
        return log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"

    def up(self, prefect: bool = True) -> Endpoints:
        """Start PostgreSQL (if asked), MLflow, the Prefect server, deploy, then the worker; skip what runs.
        prefect=False: the MLflow side only (a store for flows run elsewhere)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        running, env, bin_dir = self.running(), self._env(), Path(sys.executable).parent
        if self.cfg.stack.backend == "postgres" and "postgres" not in running:
            self._record("postgres", LocalPostgres(self.dir, self.cfg.stack.postgres_port).start())
        if "mlflow" not in running:
            artifacts = self.cfg.stack.artifacts_destination or str(self.cfg.paths.home / "mlartifacts")
            if "://" not in artifacts:
                Path(artifacts).mkdir(parents=True, exist_ok=True)
            refuse_taken_port("mlflow", self.cfg.stack.mlflow_port, "stack.mlflow_port")
            proc = self._spawn(
                "mlflow",
                [
                    str(bin_dir / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.cfg.stack.mlflow_port),
                    "--backend-store-uri",
                    self.endpoints.backend_store,
                    "--workers",
                    "1",
                    "--artifacts-destination",
                    artifacts,
                ],
                env,
            )
            self._wait_healthy("mlflow", f"{self.endpoints.mlflow}/health", proc)
        env_file = self.dir / "env"
        env_file.write_text(
            "".join(
                f"export {k}={v}\n"
                for k, v in self.endpoints.client_env().items()
                if prefect or k == "MLFLOW_TRACKING_URI"
            )
        )
        if not prefect:
            return self.endpoints
        if "prefect-server" not in running:
            refuse_taken_port("prefect-server", self.cfg.stack.prefect_port, "stack.prefect_port")
            proc = self._spawn(
                "prefect-server",
                [
                    str(bin_dir / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.cfg.stack.prefect_port),
                    "--analytics-off",
                ],
                {**env, "PREFECT_UI_API_URL": self.endpoints.prefect_api},
            )  # the UI's own default is port 4200
            self._wait_healthy("prefect-server", f"{self.endpoints.prefect_api}/health", proc)
        env.update(self.endpoints.client_env())
        self.deploy(env)
        if "worker" not in running:
            self._spawn(
                "worker",
                [
                    str(bin_dir / "prefect"),
                    "worker",
                    "start",
                    "--pool",
                    self.cfg.stack.work_pool,
                    "--type",
                    "process",
                    "--name",
                    "instructrec-worker",
                ],
                {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"},
            )
        return self.endpoints

    def deploy(self, env: dict[str, str]) -> None:
        """The work pool, every deployment in prefect.yaml (schedules and triggers included), the automation."""
        prefect = str(Path(sys.executable).parent / "prefect")
        pool = self.cfg.stack.work_pool
        if subprocess.run([prefect, "work-pool", "inspect", pool], env=env, capture_output=True).returncode:
            _check(
                subprocess.run(
                    [prefect, "work-pool", "create", pool, "--type", "process"], env=env, capture_output=True, text=True
                ),
                f"work-pool create {pool}",
            )
        _check(
            subprocess.run(
                [prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=self.repo, capture_output=True, text=True
            ),
            "prefect deploy --all",
        )
        _check(
            subprocess.run(
                [sys.executable, "-m", "ops.automations"], env=env, cwd=self.repo, capture_output=True, text=True
            ),
            "failure automation",
        )

    def down(self) -> list[str]:
        """Stop what `up` started (by recorded pid), the worker first; returns the names stopped."""
        stopped = []
        for name in ("worker", "prefect-server", "mlflow"):
            pid = self.state()["pids"].get(name)
            if pid and process_alive(pid):
                _terminate(pid)
                stopped.append(name)
        if self.state()["pids"].get("postgres"):
            LocalPostgres(self.dir, self.cfg.stack.postgres_port).stop()
            stopped.append("postgres")
        self.state_file.unlink(missing_ok=True)
        return stopped


def _terminate(pid: int, grace: float = 20.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `grace` seconds, and wait until the leader is gone
    (reaped, when it is our child): a loaded host can take longer than `grace` to stop a server, and a killed
    child left unreaped would still answer to its pid."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _wait_gone(pid, grace)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not _wait_gone(pid, 10.0):
        raise StackError(f"process {pid} survived SIGKILL for 10 s")


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True
