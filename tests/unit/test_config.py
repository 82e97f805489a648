import pytest
from pydantic import ValidationError

from flows.cli import parse_overrides
from instructrec.config import load_config


def test_profiles_differ_only_in_values(tmp_path):
    env = {"INSTRUCTREC_HOME": str(tmp_path)}
    tiny, cpu = load_config("tiny", environ=env), load_config("cpu", environ=env)
    assert tiny.model.backbone == "tiny" and cpu.model.backbone == "minilm"
    assert cpu.paths.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_is_read_once_at_load(tmp_path):
    cfg = load_config("cpu", environ={"INSTRUCTREC_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "postgresql://db/x"})
    assert cfg.paths.tracking_uri == "postgresql://db/x" and cfg.paths.home == tmp_path.resolve()


def test_mlflow_backend_picks_the_stacks_store_and_nothing_else(tmp_path):
    env = {"INSTRUCTREC_HOME": str(tmp_path)}
    assert load_config("cpu", environ=env).stack.backend == "sqlite"
    cfg = load_config("cpu", environ={**env, "MLFLOW_BACKEND": "postgres"})
    assert cfg.stack.backend == "postgres" and cfg.paths.tracking_uri.startswith("sqlite:")  # clients: MLFLOW_TRACKING_URI
    with pytest.raises(ValidationError):
        load_config("cpu", environ={**env, "MLFLOW_BACKEND": "mysql"})


def test_overrides_are_typed_and_unknown_keys_rejected(tmp_path):
    env = {"INSTRUCTREC_HOME": str(tmp_path)}
    cfg = load_config("cpu", overrides=parse_overrides(["train.epochs=3", "gate.min_gain=0.01"]), environ=env)
    assert cfg.train.epochs == 3 and cfg.gate.min_gain == 0.01
    with pytest.raises(ValidationError):
        load_config("cpu", overrides={"train": {"epoch": 3}}, environ=env)
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("huge", environ=env)


def test_flat_params_cover_every_section(tmp_path):
    flat = load_config("cpu", environ={"INSTRUCTREC_HOME": str(tmp_path)}).flat()
    assert {"profile", "model.dim", "train.epochs", "gate.epsilon", "eval.types"} <= set(flat)


def test_a_source_preset_sits_between_the_profile_and_overrides(tmp_path):
    env = {"INSTRUCTREC_HOME": str(tmp_path)}
    ml100k, ml1m = load_config("cpu", environ=env), load_config("cpu", data="movielens-1m", environ=env)
    assert ml100k.data.max_history == 20 and ml1m.data.max_history == 200 and ml1m.data.window_stride is None
    assert ml1m.model == ml100k.model  # sizes of data, not of the model
    assert load_config("cpu", overrides={"data": {"source": "movielens-1m"}}, environ=env).data.max_history == 200
    mine = load_config("cpu", data="movielens-1m", overrides={"data": {"max_history": 50}}, environ=env)
    assert mine.data.max_history == 50 and mine.data.source == "movielens-1m"
    assert load_config("tiny", data="movielens-1m", environ=env).data.max_history == 20  # tests keep tiny's sizes
