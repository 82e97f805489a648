"""build_model: a fresh scorer on the session's tiny config and prepared data (tests/conftest.py)."""

from instructrec.training.train import new_scorer


def build_model(cfg, prepared, seed=0):
    return new_scorer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})}), prepared.catalogue)
