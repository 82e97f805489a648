from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from instructrec.config import PROFILES, Config, load_config
from ops.cli import parse_overrides


def test_profiles_differ_only_in_values(tmp_path):
    env = {"INSTRUCTREC_HOME": str(tmp_path)}
    flat = {p: load_config(p, environ=env).flat() for p in PROFILES}
    assert len({frozenset(f) for f in flat.values()}) == 1, "every profile sets the same fields"
    differ = {k for k in flat["cpu"] if len({flat[p][k] for p in PROFILES}) > 1}
    # the model's size and its training budget are what a profile is about; where things live is not
    assert {"profile", "model.backbone", "model.dim", "train.device", "data.max_users"} <= differ
    assert not {k for k in differ if k.startswith(("paths.", "serve.", "stack."))}
    assert flat["tiny"]["model.backbone"] == "tiny" and flat["cpu"]["model.backbone"] == "minilm"
    assert flat["cpu"]["paths.tracking_uri"] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_environment_is_read_once_at_load(tmp_path):
    cfg = load_config("cpu", environ={"INSTRUCTREC_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "postgresql://db/x"})
    assert cfg.paths.tracking_uri == "postgresql://db/x" and cfg.paths.home == tmp_path.resolve()


def test_mlflow_backend_picks_the_stacks_store_and_nothing_else(tmp_path):
    env = {"INSTRUCTREC_HOME": str(tmp_path)}
    assert load_config("cpu", environ=env).stack.backend == "sqlite"
    cfg = load_config("cpu", environ={**env, "MLFLOW_BACKEND": "postgres"})
    assert cfg.stack.backend == "postgres" and cfg.paths.tracking_uri.startswith(
        "sqlite:"
    )  # clients: MLFLOW_TRACKING_URI
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


def _leaves(model: type[BaseModel], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel) and kind is not Path:
            out |= _leaves(kind, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def test_flat_params_cover_every_field_of_every_section(tmp_path):
    """MLflow params are the whole resolved config: every leaf field of every section, by its --set key."""
    flat = load_config("cpu", environ={"INSTRUCTREC_HOME": str(tmp_path)}).flat()
    leaves = _leaves(Config)
    assert len(leaves) > 100 and {"gate.online.mde", "serve.port", "runtime.engine"} <= leaves
    assert set(flat) == leaves


def test_a_source_preset_sits_between_the_profile_and_overrides(tmp_path):
    env = {"INSTRUCTREC_HOME": str(tmp_path)}
    ml100k, ml1m = load_config("cpu", environ=env), load_config("cpu", data="movielens-1m", environ=env)
    assert ml100k.data.max_history == 20 and ml1m.data.max_history == 200 and ml1m.data.window_stride is None
    assert ml1m.model == ml100k.model  # sizes of data, not of the model
    assert load_config("cpu", overrides={"data": {"source": "movielens-1m"}}, environ=env).data.max_history == 200
    mine = load_config("cpu", data="movielens-1m", overrides={"data": {"max_history": 50}}, environ=env)
    assert mine.data.max_history == 50 and mine.data.source == "movielens-1m"
    assert load_config("tiny", data="movielens-1m", environ=env).data.max_history == 20  # tests keep tiny's sizes


# Fields read directly where they act, not through a settings object: the file that reads each one.
READ_IN_PLACE = {
    "train.init_from_baseline": "tasks/training.py",  # warm start of the scorer from SASRec
    "model.backbone": "instructrec/training/train.py",  # load_backbone in new_scorer
    "model.bert_dropout": "instructrec/training/train.py",  # new_scorer
    "baseline.enabled": "tasks/training.py",
    "feedback.like_min_rating": "instructrec/online/feedback.py",  # examples_from_config
    "feedback.dislike_max_rating": "instructrec/online/feedback.py",  # examples_from_config
    "feedback.replay_ratio": "instructrec/online/feedback.py",  # examples_from_config
    "feedback.online_replay_ratio": "instructrec/online/feedback.py",
    "feedback.trigger_events": "service/app.py",  # the fine-tuning trigger
}
ROOT = Path(__file__).resolve().parents[2]


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 3
    return f"{value}-changed"


def _settings_objects(cfg):
    from instructrec.training.baseline import baseline_config, baseline_settings
    from instructrec.training.train import feedback_settings, representation_settings, scorer_config

    return (
        representation_settings(cfg),
        feedback_settings(cfg),
        feedback_settings(cfg, online=True),
        scorer_config(cfg, n_items=50),
        baseline_config(cfg, n_items=50),
        baseline_settings(cfg),
    )


@pytest.mark.parametrize("section", ["train", "model", "baseline", "feedback"])
def test_every_training_field_reaches_a_settings_object(tmp_path, section):
    """The settings dataclasses are built by keyword from the config; a field added to the config but never passed
    on would silently do nothing. Each field, changed alone, must change what the fit or the model receives."""
    cfg = load_config("tiny", environ={"INSTRUCTREC_HOME": str(tmp_path)})
    before = _settings_objects(cfg)
    part = getattr(cfg, section)
    lost = []
    for name in type(part).model_fields:
        key = f"{section}.{name}"
        changed = cfg.model_copy(update={section: part.model_copy(update={name: _changed(getattr(part, name))})})
        if key in READ_IN_PLACE:
            assert f".{name}" in (ROOT / READ_IN_PLACE[key]).read_text(), f"{key} is not read in {READ_IN_PLACE[key]}"
        elif _settings_objects(changed) == before:
            lost.append(key)
    assert not lost, f"config fields that reach no settings object: {lost}"
