"""The A/B test's state and evidence: where an experiment is kept, and the per-user traffic it reads.

An experiment (its plan and every look) is kept as JSON under
$INSTRUCTREC_HOME/experiments/, next to the feedback log it is computed from,
and logged to the MLflow run of every look.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from instructrec.config import Config
from instructrec.data import schema
from instructrec.online.abtest import CHALLENGER_ARM, CHAMPION_ARM, ArmUsers, experiment_id
from instructrec.online.experiment import Experiment, plan_test
from instructrec.online.feedback import online_users, read_impressions, read_store


def folder(cfg: Config):
    return cfg.paths.home / "experiments"


def open_experiment(cfg: Config, champion: str, challenger: str, since: datetime) -> Experiment:
    """The running test of this challenger (a new one, planned from the champion's traffic, on its first use)."""
    salt = experiment_id(cfg.serve.experiment, challenger)
    exp = Experiment.load(folder(cfg), salt)
    if exp is not None:
        return exp
    exp = Experiment(salt, champion, challenger, since.isoformat(), cfg.serve.challenger_share)
    traffic, hours = prior_traffic(cfg, champion, since)
    if traffic.users >= cfg.gate.online.min_users and traffic.likes.sum() > 0:
        exp.plan = plan_test(traffic, hours, cfg.gate.online, exp.share, "champion traffic before the test")
    exp.save(folder(cfg))
    return exp


def prior_traffic(cfg: Config, champion: str, since: datetime) -> tuple[ArmUsers, float]:
    """The champion's own traffic in the planning window before the test, per user, and the hours it spans."""
    start = since - timedelta(hours=cfg.gate.online.plan_window_hours)
    impressions = read_impressions(cfg.paths.feedback).filter(
        (pl.col(schema.TIMESTAMP) < since) & (pl.col(schema.TIMESTAMP) >= start)
    )
    if impressions.height == 0:
        return ArmUsers.empty(), 0.0
    first = impressions[schema.TIMESTAMP].min()
    assert isinstance(first, datetime)
    hours = max((since - first).total_seconds() / 3600.0, 1.0 / 60.0)
    users = online_users(impressions, read_store(cfg.paths.feedback), {CHAMPION_ARM: champion})[CHAMPION_ARM]
    return users, hours


def impressions_since(cfg: Config, since: datetime) -> pl.DataFrame:
    """The served lists logged since the test started."""
    return read_impressions(cfg.paths.feedback).filter(pl.col(schema.TIMESTAMP) >= since)


def arms_of(cfg: Config, impressions: pl.DataFrame, champion: str, challenger: str) -> dict[str, ArmUsers]:
    """Each arm's per-user traffic in `impressions` (only the arm's own model version counts)."""
    return online_users(
        impressions, read_store(cfg.paths.feedback), {CHAMPION_ARM: champion, CHALLENGER_ARM: challenger}
    )
