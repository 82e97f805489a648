"""MLflow writes retry on transient errors only."""

from __future__ import annotations

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
    from instructrec.gate import Decision
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

    from instructrec.train import FitResult
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
    logger.replay(FitResult(history=[initial, restored, {"epoch": 1, "loss": 0.5, "seconds": 2.0}]))

    losses = client.get_metric_history(run_id, "representation/loss")
    assert sorted((m.step, m.value) for m in losses) == [(1, 0.9), (2, 0.5)]  # epoch 2 once, from the rank
    assert [m.step for m in client.get_metric_history(run_id, "representation/val_ndcg_at_10")] == [0, 1]
