"""Tasks of the online loop: the A/B gate on served traffic, and a challenger tuned on new feedback."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import tracking
from instructrec.config import Config
from instructrec.data import schema
from instructrec.evaluation.gate import Decision, decision_from_dict
from instructrec.models.model import load_scorer
from instructrec.online.abtest import CHALLENGER_ARM, CHAMPION_ARM, ArmUsers
from instructrec.online.experiment import Experiment, decide_online, look, looks_figure, looks_table
from instructrec.online.feedback import examples_from_config, read_impressions, read_store
from instructrec.serving.lists import served_list_metrics
from instructrec.training.prepare import Prepared
from instructrec.training.train import feedback_settings, fit
from model_registry import registry
from model_registry.serving import load_version
from tasks import experiments
from tasks.promotion import promote
from tasks.training import (
    EpochLogger,
    Trained,
    _summarise,
    fingerprint,
    fit_run,
    newest_event,
    text_cache,
    validator,
)

ONLINE_STAGE = "online_feedback"


@dataclass
class OnlineGateResult:
    outcome: str  # promote | reject | insufficient_data | no_challenger
    champion: str | None
    challenger: str | None
    decision: Decision | None = None


def _reject_stale(version: str, evaluated_against: str | None, champion: str) -> Decision:
    registry.remove_alias(registry.CHALLENGER)
    text = (
        f"Online gate: REJECTED. Evaluated offline against v{evaluated_against}, but the champion is now v{champion}."
    )
    registry.describe(version, text, {"online_gate": "reject"})
    return Decision("reject", [], {"evaluated_against": evaluated_against, "champion": champion})


@task(name="online-gate", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def online_gate(cfg: Config, run_id: str, trigger: str = "manual") -> OnlineGateResult:
    """One look at the running A/B test (sequential: promote, reject, or continue collecting), with the
    challenger's offline checks; the looks so far, their boundaries and the decision go to the run and the
    challenger's version page."""
    logger = get_run_logger()
    champ, chal = registry.get_alias(registry.CHAMPION), registry.get_alias(registry.CHALLENGER)
    if champ is None or chal is None or chal.version == champ.version:
        return OnlineGateResult("no_challenger", champ.version if champ else None, None)
    tags = registry.tags(chal.version)
    if tags.get("evaluated_against") != champ.version:
        decision = _reject_stale(chal.version, tags.get("evaluated_against"), champ.version)
        return OnlineGateResult("reject", champ.version, chal.version, decision)
    offline = decision_from_dict(tracking.load_json(tags["run_id"], "gate/decision.json"))
    since = datetime.fromisoformat(tags["challenger_since"])
    exp = experiments.open_experiment(cfg, champ.version, chal.version, since)
    impressions = experiments.impressions_since(cfg, since)  # read once: the test's evidence and the lists' metrics
    arms = experiments.arms_of(cfg, impressions, champ.version, chal.version)
    outcome = look(exp, arms[CHAMPION_ARM], arms[CHALLENGER_ARM], datetime.now(UTC), cfg.gate.online, trigger)
    exp.save(experiments.folder(cfg))
    decision = decide_online(offline, outcome, exp, cfg.gate)
    _log_look(run_id, exp, decision, arms)
    _log_served_lists(cfg, champ, impressions, {CHAMPION_ARM: champ.version, CHALLENGER_ARM: chal.version}, run_id)
    if decision.outcome == "promote":
        promote(cfg, chal.version, champ.version)
    elif decision.outcome == "reject":
        registry.remove_alias(registry.CHALLENGER)
    registry.describe(chal.version, online_description(decision, exp), {"online_gate": decision.outcome})
    logger.info(
        "online gate for v%s vs champion v%s: %s (%s; %s)",
        chal.version,
        champ.version,
        decision.outcome,
        outcome.reason,
        outcome.progress,
    )
    return OnlineGateResult(decision.outcome, champ.version, chal.version, decision)


def online_description(decision: Decision, exp: Experiment) -> str:
    """The version page: where the test stands in one paragraph, then every look with its boundaries."""
    n = decision.numbers
    plan = (
        f"Planned sample: {n['online_planned_users']:,} users, {n['online_planned_impressions']:,} impressions "
        f"(sized from {n['online_plan_source']}, baseline like rate {n['online_baseline_like_rate']:.4f})."
        if exp.plan
        else "No plan yet: the first look sizes the test."
    )
    head = "Online gate: " + decision.summary(bullets=True).removeprefix("Gate: ")
    return f"{head}\n\n{plan} Looks so far: {n['online_looks']}; {n['online_progress']}.\n\n{looks_table(exp)}"


def _log_look(run_id: str, exp: Experiment, decision: Decision, arms: dict[str, ArmUsers]) -> None:
    numbers = {k: v for k, v in decision.numbers.items() if k.startswith("online_") and isinstance(v, int | float)}
    tracking.log_metrics(run_id, {f"online/{k.removeprefix('online_')}": float(v) for k, v in numbers.items()})
    tracking.log_metrics(
        run_id,
        {f"online/{arm}/{k}": v for arm, users in arms.items() for k, v in _arm_numbers(users).items()},
    )
    tracking.log_json(
        run_id,
        {**decision.to_dict(), "champion": exp.champion, "challenger": exp.challenger},
        "gate/online_decision.json",
    )
    tracking.log_json(run_id, exp.to_dict(), "gate/online_experiment.json")
    tracking.log_text(run_id, looks_table(exp), "gate/online_looks.md")
    if any(not math.isnan(lk.upper) for lk in exp.looks):
        tracking.log_figure(run_id, looks_figure(exp), "gate/online_looks.png")


def _arm_numbers(users: ArmUsers) -> dict[str, float]:
    c = users.counts()
    return {"users": c.users, "impressions": c.impressions, "likes": c.likes, "like_rate": c.like_rate}


def _log_served_lists(
    cfg: Config, champion: registry.VersionRef, impressions: pl.DataFrame, arms: dict[str, str], run_id: str
) -> None:
    """Diversity, coverage and novelty of what each arm served (item vectors and popularity: the champion's)."""
    rec = load_version(cfg, champion)
    if rec.space is None:
        return
    index = rec.catalogue.index
    for arm, version in arms.items():
        served = impressions.filter((pl.col(schema.ARM) == arm) & (pl.col(schema.MODEL_VERSION) == version))
        lists = [[index[i] - 1 for i in items if i in index] for items in served["items"].to_list()]
        tracking.log_metrics(run_id, {f"online/{arm}/{k}": v for k, v in served_list_metrics(lists, rec.space).items()})


def new_feedback(cfg: Config, champion: registry.VersionRef) -> tuple[pl.DataFrame, str | None]:
    """(stored events newer than the newest one the champion was tuned on, that timestamp)."""
    store = read_store(cfg.paths.feedback)
    until = registry.tags(champion.version).get("feedback_until") or None
    return (store.filter(pl.col(schema.TIMESTAMP) > datetime.fromisoformat(until)) if until else store), until


@task(name="finetune-online-feedback", cache_policy=NO_CACHE)
def finetune_from_champion(
    cfg: Config, prepared: Prepared, champion: registry.VersionRef, events: pl.DataFrame, until: str | None, run_id: str
) -> Trained:
    """Start from the champion's weights; tune on `events` (the feedback gathered since it was tuned, up to
    `until`), plus replay."""
    logger = get_run_logger()
    local = registry.download_checkpoint(champion, tracking.scratch_dir("champion"))
    model, tokenizer, item_ids = load_scorer(local, cfg.train.device)
    if item_ids != prepared.catalogue.item_ids:
        raise ValueError(
            f"champion v{champion.version} was trained on another catalogue than the current data; "
            "run the training pipeline instead of fine-tuning"
        )
    impressions = read_impressions(cfg.paths.feedback).filter(pl.col("instruction").is_not_null())
    requests = dict(impressions.select(schema.REQUEST_ID, "instruction").iter_rows())
    examples, stats = examples_from_config(cfg, prepared.split, events, prepared.examples, True, requests)
    tracking.log_metrics(run_id, {f"{ONLINE_STAGE}/{k}": v for k, v in stats.as_dict().items()})
    fp = fingerprint(ONLINE_STAGE, champion.version, champion.run_id, cfg.feedback, sorted(events[schema.EVENT_ID]))
    settings = feedback_settings(cfg, online=True)
    epochs = EpochLogger(run_id, ONLINE_STAGE, settings.epochs)
    cache = text_cache(cfg)
    validate = validator(prepared, tokenizer, cfg, cache)
    result = fit(model, tokenizer, examples, settings, validate, fit_run(cfg, fp, epochs, cache))
    logger.info(
        "tuned v%s on %d new events (%s): validation NDCG@10 %.4f -> %.4f",
        champion.version,
        events.height,
        stats.as_dict(),
        result.history[0]["val_ndcg@10"],
        result.best_metric,
    )
    _summarise(run_id, ONLINE_STAGE, result, epochs)
    return Trained(model, tokenizer, result, fp, newest_event(events) or until, cache)
