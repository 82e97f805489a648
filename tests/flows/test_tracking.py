"""MLflow writes retry on transient errors only."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from adapters.tracking import retrying, transient


def flaky(errors: list[BaseException]):
    calls = []

    def write(x):
        calls.append(x)
        if errors:
            raise errors.pop(0)
        return x * 2

    return write, calls


def test_a_dropped_connection_and_a_locked_store_are_retried_until_the_write_lands():
    write, calls = flaky(
        [ConnectionError("reset by peer"), MlflowException("(sqlite3.OperationalError) database is locked")]
    )
    assert retrying(write, attempts=3, delay=0)(21) == 42
    assert len(calls) == 3


def test_bad_requests_and_missing_files_raise_at_once():
    for error in (
        MlflowException("bad metric key", error_code=INVALID_PARAMETER_VALUE),
        FileNotFoundError("x"),
        ValueError("nan"),
    ):
        write, calls = flaky([error])
        with pytest.raises(type(error)):
            retrying(write, attempts=3, delay=0)(1)
        assert len(calls) == 1 and not transient(error)


def test_gives_up_after_the_last_attempt():
    write, calls = flaky([TimeoutError("slow")] * 5)
    with pytest.raises(TimeoutError):
        retrying(write, attempts=3, delay=0)(1)
    assert len(calls) == 3


def test_a_run_that_loses_the_promotion_race_is_superseded_with_a_plain_next_step(tmp_path):
    """Another run moved `champion` after this one was evaluated: no traceback, aliases untouched, and the version
    says what happened and what to do."""
    import mlflow

    from instructrec.config import load_config
    from instructrec.evaluation.gate import Decision
    from model_registry import registry
    from tasks.promotion import SUPERSEDED, _place

    cfg = load_config("tiny", environ={"INSTRUCTREC_HOME": str(tmp_path)})
    registry.connect(cfg.paths.tracking_uri)
    try:
        c = registry.client()
        c.create_registered_model(registry.MODEL_NAME)
        for _ in range(2):
            c.create_model_version(registry.MODEL_NAME, source=(tmp_path / "model").as_uri())
        c.set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, "2")  # the other run won meanwhile
        outcome, tags = _place(Decision("promote", [], {}), "1", None, online_rollout=False, cfg=cfg)
        assert outcome == SUPERSEDED and tags["superseded_by"] == "2"
        assert "another run promoted v2" in tags["next_step"] and "run the pipeline again" in tags["next_step"]
        assert registry.aliases() == {"champion": "2"}
        outcome, _ = _place(Decision("promote", [], {}), "1", "2", online_rollout=False, cfg=cfg)
        assert outcome == "promote" and registry.aliases() == {"champion": "1", "previous-champion": "2"}
    finally:
        mlflow.set_tracking_uri(None)


def test_a_ranks_epoch_logger_writes_to_the_runs_store_and_replay_adds_only_what_no_process_logged(tmp_path):
    """DDP rank 0 logs from its own process (pickled there, another tracking URI or none); the driver then
    replays the epochs restored from a checkpoint, without logging the rank's twice."""
    import pickle

    import mlflow

    from instructrec.training.train import FitResult
    from tasks.training import EpochLogger

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("x", f"file://{tmp_path / 'art'}")).info.run_id
    logger = EpochLogger(run_id, "representation")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # the rank's process knows nothing of it
    pickle.loads(pickle.dumps(logger))({"epoch": 1, "loss": 0.5, "seconds": 2.0})
    restored = {"epoch": 0, "loss": 0.9, "seconds": 2.0, "val_ndcg@10": 0.1}  # from the checkpoint
    initial = {"epoch": -1, "loss": float("nan"), "val_ndcg@10": 0.05}
    mlflow.set_tracking_uri(store)
    logger.replay(FitResult(history=[initial, restored, {"epoch": 1, "loss": 0.5, "seconds": 2.0}]).history)

    losses = client.get_metric_history(run_id, "representation/train_loss")
    assert sorted((m.step, m.value) for m in losses) == [(1, 0.9), (2, 0.5)]  # epoch 2 once, from the rank
    assert [m.step for m in client.get_metric_history(run_id, "representation/val_ndcg_at_10")] == [0, 1]


def test_a_progress_line_per_epoch_estimates_what_is_left_from_the_epochs_this_process_ran():
    """A log file has no progress bar: each epoch is one line with the loss, the validation metric (and the best so
    far), the time elapsed and an upper bound on what is left (every remaining epoch at this process's pace)."""
    import time

    from tasks.training import EpochLogger

    fresh = EpochLogger("run", "representation", 40)
    fresh.started = time.time() - 120  # two minutes in, after epoch 2 of 40 (index 1)
    assert fresh.line({"epoch": 1, "loss": 5.12344, "val_ndcg@10": 0.0932}) == (
        "representation epoch 2/40: loss 5.1234, val NDCG@10 0.0932 (best 0.0932); 2m00s elapsed, at most 38m00s left"
    )
    assert "(best 0.0932)" in fresh.line({"epoch": 2, "loss": 5.0, "val_ndcg@10": 0.0900})

    resumed = EpochLogger("run", "sasrec", 40)  # resumed after epoch 30: its first epoch here is index 30
    resumed.started = time.time() - 60
    assert resumed.line({"epoch": 30, "loss": 1.0}).startswith("sasrec epoch 31/40: loss 1.0000; 1m00s elapsed")
    assert resumed.first is not None
    resumed.first = (30, resumed.first[1] - 60)  # one epoch later, a minute on: the pace is a minute an epoch
    assert resumed.line({"epoch": 31, "loss": 1.0}).endswith("at most 8m00s left")
    assert "left" not in EpochLogger("run", "feedback", 3).line({"epoch": 2, "loss": 1.0})  # the last epoch


def test_a_long_epoch_writes_a_line_every_half_minute_with_what_is_left_of_it(caplog):
    import logging
    import time

    from tasks.progress import STEP_LINE_SECONDS
    from tasks.training import EpochLogger

    logger = EpochLogger("run", "representation", 40)
    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        logger.step(2, 1, 100, 5.0)  # the epoch's first step: its pace is not known yet
        logger.last_line -= STEP_LINE_SECONDS
        assert logger.epoch_started is not None
        logger.epoch_started = (2, 1, time.time() - 60)  # 60 s for steps 2..31: 2 s a step
        logger.step(2, 31, 100, 4.5)
        logger.step(2, 32, 100, 4.4)  # too soon after the last line
        logger.last_line -= STEP_LINE_SECONDS
        logger.step(2, 100, 100, 4.0)  # the epoch's own line follows
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("representation epoch 3/40: 31% of 100 steps, loss 4.5000")
    assert lines[0].endswith("this epoch about 2m18s left")


def test_a_stage_with_nothing_to_say_still_writes_a_line_each_period_and_a_talking_one_does_not(caplog):
    import logging
    import time

    from tasks.progress import heartbeat, say

    with caplog.at_level(logging.INFO, logger="tasks.progress"):
        with heartbeat("export_onnx", every=0.3):
            time.sleep(1.1)  # silent: a line at about 0.3, 0.6 and 0.9 s
        silent = [r.getMessage() for r in caplog.records]
        caplog.clear()
        with heartbeat("train_sasrec", every=0.3):
            for _ in range(10):
                say("sasrec epoch ...")  # a stage with its own lines
                time.sleep(0.1)
    assert 2 <= len(silent) <= 4 and all(m.startswith("export_onnx: still at work, ") for m in silent), silent
    assert [r.getMessage() for r in caplog.records] == ["sasrec epoch ..."] * 10


def test_a_stage_logs_one_curve_per_series_stepped_by_epoch_and_the_kept_best_as_its_summary(tmp_path):
    """The curves' latest value is the last epoch's; the run's summary (best_val_ndcg@10, best_epoch) is the epoch
    training kept; the per-type validation scores go to the stage's history table, not to metrics."""
    import json

    import mlflow

    from instructrec.training.train import FitResult
    from tasks.training import EpochLogger, _summarise

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        run_id = client.create_run(client.create_experiment("x", (tmp_path / "art").as_uri())).info.run_id
        per_type = {"val_P1_I0_ndcg@10": 0.2, "val_P2_I1_ndcg@10": 0.3}
        history = [{"epoch": -1, "loss": float("nan"), "val_ndcg@10": 0.05, **per_type}]
        history += [
            {"epoch": e, "loss": 1.0 - 0.1 * e, "seconds": 1.5, "val_ndcg@10": v, **per_type}
            for e, v in enumerate([0.10, 0.30, 0.20])  # best after epoch 2, not the last (3)
        ]
        result = FitResult(history=history, best_epoch=1, best_metric=0.30, examples_per_s=100.0)
        _summarise(run_id, "representation", result, EpochLogger(run_id, "representation"))

        metrics = client.get_run(run_id).data.metrics
        assert {k for k in metrics} == {
            "representation/train_loss",
            "representation/val_ndcg_at_10",
            "representation/epoch_seconds",
            "representation/best_val_ndcg_at_10",
            "representation/best_epoch",
            "representation/examples_per_s",
        }
        val = client.get_metric_history(run_id, "representation/val_ndcg_at_10")
        assert sorted((m.step, m.value) for m in val) == [(0, 0.05), (1, 0.10), (2, 0.30), (3, 0.20)]
        assert [m.step for m in client.get_metric_history(run_id, "representation/train_loss")] == [1, 2, 3]
        assert metrics["representation/val_ndcg_at_10"] == 0.20  # the curve ends at the last epoch...
        assert metrics["representation/best_val_ndcg_at_10"] == 0.30  # ...the summary is the kept one
        assert metrics["representation/best_epoch"] == 2
        table = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/representation/history.json"))
        assert "val_P1_I0_ndcg@10" in table["columns"] and len(table["data"]) == 4
        assert {a.path for a in client.list_artifacts(run_id, "representation")} >= {"representation/curves.png"}
    finally:
        mlflow.set_tracking_uri(None)


def test_the_dataset_panel_shows_the_whole_inputs_size_not_the_rows_its_schema_was_read_from(tmp_path):
    import json

    import mlflow
    import polars as pl

    from instructrec.data.snapshot import Snapshot
    from instructrec.data.sources import Tables
    from tasks.data import SCHEMA_ROWS, _log_dataset_input

    n = SCHEMA_ROWS + 1500
    inter = pl.DataFrame(
        {"user_id": [f"u{i % 70}" for i in range(n)], "item_id": [f"i{i % 90}" for i in range(n)], "rating": [4.0] * n}
    )
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(95)], "title": ["t"] * 95, "text": ["t"] * 95})
    snap = Snapshot("ab" * 32, tmp_path / "snap", "directory", str(tmp_path), True)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        run_id = client.create_run(client.create_experiment("x", (tmp_path / "art").as_uri())).info.run_id
        _log_dataset_input(run_id, Tables(inter, items, {}), snap)
        run = client.get_run(run_id)
        (used,) = run.inputs.dataset_inputs
        profile = json.loads(used.dataset.profile)
        assert profile["num_rows"] == n and profile["users"] == 70 and profile["items"] == 95
        assert profile["schema_read_from_first_rows"] == SCHEMA_ROWS and profile["content_hash"] == snap.hash
        assert "user_id" in {c["name"] for c in json.loads(used.dataset.schema)["mlflow_colspec"]}
        assert [(t.key, t.value) for t in used.tags] == [("mlflow.data.context", "training")]
        tags = run.data.tags
        assert (tags["data.interactions"], tags["data.users"], tags["data.items"]) == (str(n), "70", "95")
    finally:
        mlflow.set_tracking_uri(None)


def _git(cwd, *args):
    import subprocess

    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def test_the_code_version_is_the_checkouts_commit_and_dirty_flag(tmp_path):
    import subprocess

    from adapters.tracking import CODE_DIRTY, GIT_COMMIT, code_version

    repo = tmp_path / "repo"
    (repo / "adapters").mkdir(parents=True)
    (repo / "adapters" / "tracking.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    clean = code_version(repo)
    assert clean[GIT_COMMIT] == head.strip() and clean[CODE_DIRTY] == "false"
    (repo / "adapters" / "tracking.py").write_text("x = 2\n")  # an uncommitted change: not what the commit says
    assert code_version(repo)[CODE_DIRTY] == "true"
    # this checkout: the same commit git reports
    here = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    if here.returncode == 0:
        assert code_version()[GIT_COMMIT] == here.stdout.strip()


def test_without_git_or_a_checkout_of_its_own_the_code_version_says_unknown(tmp_path, monkeypatch):
    from adapters.tracking import CODE_DIRTY, GIT_BRANCH, GIT_COMMIT, code_version

    installed = tmp_path / "site-packages"  # an installed package: no checkout at all
    installed.mkdir()
    unknown = {GIT_COMMIT: "unknown", GIT_BRANCH: "unknown", CODE_DIRTY: "unknown"}
    assert code_version(installed).items() >= unknown.items()
    repo = tmp_path / "repo"  # a package inside someone else's checkout (a venv in a repo): not that repo's commit
    (repo / "venv" / "site-packages").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "c")
    assert code_version(repo / "venv" / "site-packages").items() >= unknown.items()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git not installed
    assert code_version().items() >= unknown.items()


def test_an_onnx_graphs_signature_lists_its_inputs_and_outputs_with_dynamic_axes():
    import numpy as np
    from onnx import TensorProto, helper

    from adapters.tracking import onnx_signature

    graph = helper.make_model(
        helper.make_graph(
            [helper.make_node("Cast", ["history"], ["scores"], to=TensorProto.FLOAT)],
            "g",
            [
                helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
                helper.make_tensor_value_info("history", TensorProto.INT64, ["batch", 7]),
            ],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 7])],
        )
    )
    sig = onnx_signature(graph)
    assert [(s.name, s.type, s.shape) for s in sig.inputs.inputs] == [
        ("input_ids", np.dtype("int64"), (-1, -1)),
        ("history", np.dtype("int64"), (-1, 7)),
    ]
    assert [(s.name, s.type, s.shape) for s in sig.outputs.inputs] == [("scores", np.dtype("float32"), (-1, 7))]


SETUP = """
import sys, time
from pathlib import Path
from adapters import tracking
from instructrec.config import load_config

home, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = load_config("tiny", environ={"INSTRUCTREC_HOME": str(home)})
(home / f"ready-{me}").touch()
while len(list(home.glob("ready-*"))) < n:  # every process is past its imports: they reach the store together
    time.sleep(0.01)
print(tracking.configure(cfg))
"""


@pytest.mark.slow  # three interpreters importing MLflow: ~20 s
def test_pipelines_started_together_on_a_fresh_home_set_up_one_store_without_colliding(tmp_path):
    """Without the set-up lock, three processes ran MLflow's schema migrations on one new SQLite file and two or
    three of them failed in alembic, in every one of three tries."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SETUP, str(home), str(i), "3"],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-2000:] for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1  # one experiment, the same id for all
