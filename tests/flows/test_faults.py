"""Faults a new user meets, with real processes: a loaded machine, two runs at once on one home, kill -9, one
SIGTERM from a scheduler.

Each `instructrec pipeline` here is a separate process with its own ephemeral Prefect server
(ops.prefect_api), exactly as `make run` starts it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from model_registry import registry
from ops.stop import children
from tests.conftest import write_dataset

pytestmark = pytest.mark.slow

QUICK = ["--set", "export.variants=false", "--set", "gate.n_bootstrap=100"]
CLI = [sys.executable, "-m", "ops.cli", "pipeline", "--profile", "tiny"]


def _pipeline(
    home: Path, data: Path, log: Path, *extra: str, env: dict[str, str] | None = None, group: bool = False
) -> subprocess.Popen:
    base = {**os.environ, "INSTRUCTREC_HOME": str(home)}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
        base.pop(key, None)
    env = {**base, **(env or {})}
    return subprocess.Popen(
        [*CLI, "--data", str(data), *QUICK, *extra],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=group,  # a process group of its own, as a terminal or systemd gives a service
    )


def _burn(n: int) -> list[subprocess.Popen]:
    """n processes spinning a core each: the machine a newcomer's laptop is while other jobs run."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, waiting for init to reap it
            return True
        time.sleep(0.2)
    return False


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    return {"home": root / "home", "data": write_dataset(root / "data"), "logs": root}


def test_two_runs_at_once_on_a_loaded_machine_both_start_and_leave_one_champion(home):
    """A fresh home (so both servers would migrate one database at once) while two processes take both cores."""
    burners = _burn(2)
    try:
        a = _pipeline(home["home"], home["data"], home["logs"] / "a.log", "--set", "train.seed=1")
        b = _pipeline(home["home"], home["data"], home["logs"] / "b.log", "--set", "train.seed=2")
        _wait_for(
            lambda: all("Beginning flow run" in (home["logs"] / f).read_text() for f in ("a.log", "b.log")),
            600,
            "both flow runs to begin under load",
        )
    finally:
        for p in burners:
            p.kill()
    assert a.wait(timeout=900) == 0, (home["logs"] / "a.log").read_text()[-3000:]
    assert b.wait(timeout=900) == 0, (home["logs"] / "b.log").read_text()[-3000:]
    registry.connect(f"sqlite:///{home['home'] / 'mlflow.db'}")
    try:
        versions, aliases = registry.versions(), registry.aliases()
        assert versions == ["1", "2"] and aliases["champion"] in versions
        assert set(aliases.values()) <= set(versions) and len(set(aliases.values())) == len(aliases)
        for v in versions:  # every version carries its decision, a superseded one also what to do next
            tags = registry.tags(v)
            assert tags["gate_outcome"] in {"promote", "reject", "challenger", "superseded"}
            assert registry.client().get_model_version(registry.MODEL_NAME, v).description.startswith("Gate:")
            if tags["gate_outcome"] == "superseded":
                assert "run the pipeline again" in tags["next_step"] and aliases["champion"] != v
    finally:
        mlflow.set_tracking_uri(None)


def test_kill_9_resumes_marks_the_killed_run_failed_and_leaves_no_server(home):
    # long enough that the kill (2 s after the first epoch's checkpoint) lands inside the run: 40 tiny epochs and
    # the stages after them take well over 10 s on any machine (was 150 epochs: 30 s more for the resumed run)
    long = ["--set", "train.epochs=40", "--set", "train.patience=40", "--set", "train.seed=3"]
    before = set(home["home"].glob("checkpoints/*/last.pt"))
    victim = _pipeline(home["home"], home["data"], home["logs"] / "killed.log", *long)
    _wait_for(lambda: set(home["home"].glob("checkpoints/*/last.pt")) - before, 600, "the first epoch checkpoint")
    time.sleep(2)
    servers = children(victim.pid)
    assert servers, "the CLI runs its Prefect server as a child"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert all(_gone(pid, within=30) for pid in servers), "the killed run's Prefect server outlived it"

    again = _pipeline(home["home"], home["data"], home["logs"] / "again.log", *long)
    assert again.wait(timeout=900) == 0, (home["logs"] / "again.log").read_text()[-3000:]
    client = MlflowClient(f"sqlite:///{home['home'] / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("instructrec").experiment_id], "tags.`instructrec.pid` != ''"
    )
    killed = [r for r in runs if r.data.tags["instructrec.pid"] == str(victim.pid)]
    resumed = [r for r in runs if r.data.tags["instructrec.pid"] == str(again.pid)]
    assert (
        len(killed) == 1
        and killed[0].info.status == "FAILED"
        and "killed" in killed[0].data.tags["instructrec.abandoned"]
    )
    assert resumed[0].info.status == "FINISHED" and "representation.resumed_after_epoch" in resumed[0].data.tags
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert _flow_run_state(home["home"], killed[0].data.tags["prefect.flow_run_id"]) == "CRASHED"


def test_one_sigterm_stops_a_run_in_a_long_stage_within_seconds_and_marks_it(home):
    """What a scheduler does (systemd, `timeout`, a terminal's Ctrl-C signal the whole process group): one SIGTERM,
    then SIGKILL after its grace period. The run must not need the second."""
    log = home["logs"] / "sigterm.log"
    before = set(home["home"].glob("checkpoints/*/last.pt"))
    long = ["--set", "train.epochs=500", "--set", "train.patience=500", "--set", "train.seed=4"]
    victim = _pipeline(home["home"], home["data"], log, *long, group=True)
    _wait_for(lambda: "representation epoch 2/500" in log.read_text(), 600, "the representation stage's 2nd epoch")
    descendants = children(victim.pid)
    assert descendants, "the CLI runs its Prefect server as a child"
    sent = time.monotonic()
    os.killpg(victim.pid, signal.SIGTERM)
    rc = victim.wait(timeout=60)
    took = time.monotonic() - sent
    text = log.read_text()
    assert rc == 128 + signal.SIGTERM and took <= 10, (rc, took, text[-3000:])
    assert "stopped by SIGTERM" in text and "Traceback" not in text, text[-3000:]
    assert all(_gone(pid, within=5) for pid in descendants), "a child of the stopped run is still running"

    client = MlflowClient(f"sqlite:///{home['home'] / 'mlflow.db'}")
    runs = client.search_runs(
        [client.get_experiment_by_name("instructrec").experiment_id], f"tags.`instructrec.pid` = '{victim.pid}'"
    )
    assert len(runs) == 1 and runs[0].info.status == "KILLED"
    assert "SIGTERM" in runs[0].data.tags["instructrec.stopped"]
    assert _flow_run_state(home["home"], runs[0].data.tags["prefect.flow_run_id"]) == "CRASHED"
    assert set(home["home"].glob("checkpoints/*/last.pt")) - before, "the last finished epoch's checkpoint is kept"


def _flow_run_state(home: Path, flow_run_id: str) -> str:
    """Asked through a server on the home's own Prefect database, in a process of its own."""
    script = textwrap.dedent(f"""
        from ops.environment import environment_defaults
        environment_defaults()
        from ops.prefect_api import prefect_api
        with prefect_api():
            from prefect.client.orchestration import get_client
            with get_client(sync_client=True) as c:
                print(c.read_flow_run({flow_run_id!r}).state.type.value)
    """)
    env = {**os.environ, "INSTRUCTREC_HOME": str(home)}
    for key in ("PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(key, None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("how", ["immutable file", "folder that is a file"])
def test_an_unwritable_tracking_store_is_named_in_one_paragraph(tmp_path, how):
    """The file exists but cannot change (chattr +i: even root cannot write it), or it cannot even be created.
    Either is named before anything starts."""
    import sqlite3

    home = tmp_path / "home"
    home.mkdir()
    extra_env = {}
    if how == "immutable file":
        store = home / "mlflow.db"
        sqlite3.connect(store).execute("create table t(x)").connection.commit()
        subprocess.run(["chattr", "+i", str(store)], check=True)  # ext4 and most Linux filesystems have the flag
    else:
        (tmp_path / "not-a-folder").write_text("")
        store = tmp_path / "not-a-folder" / "mlflow.db"
        extra_env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    try:
        out = _pipeline(home, write_dataset(tmp_path / "data"), tmp_path / "ro.log", env=extra_env)
        assert out.wait(timeout=600) == 1
    finally:
        if how == "immutable file":
            subprocess.run(["chattr", "-i", str(store)], check=True)
    log = (tmp_path / "ro.log").read_text()
    assert f"MLflow's tracking store {store} cannot be written" in log and "lsattr" in log
    assert "Traceback" not in log and len(log.splitlines()) < 40, log
    assert "Beginning flow run" not in log, "refused before a Prefect server and a flow run start (ops.cli._preflight)"
