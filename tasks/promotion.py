"""Register the challenger, run the gate, and move aliases only on `promote`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from adapters import events, tracking
from instructrec.config import Config
from instructrec.evaluation.gate import (
    ArmEvaluation,
    Decision,
    arm_of,
    decide,
    floor_baseline,
    paired_bootstrap,
    placement,
)
from instructrec.evaluation.reports import delta_histogram
from instructrec.models.model import item_tower, save_scorer
from instructrec.serving.optimize import FP32
from instructrec.serving.recommend import write_bundle
from instructrec.training.prepare import Prepared
from model_registry import registry
from tasks import experiments
from tasks.evaluation import BASELINES, CHALLENGER, CHAMPION, Evaluations, Exported
from tasks.training import Trained

# what the registered ONNX model asks of its host (MLflow pip requirements): the runtime pyproject.toml pins
ONNX_RUNTIME_REQUIREMENT = "onnxruntime-gpu==1.31.1"


@dataclass
class GateResult:
    decision: Decision
    version: str
    aliases: dict[str, str]
    outcome: str  # what happened to the version: the decision's outcome, "challenger" or "superseded"
    note: str | None = None  # what to do next, where the outcome needs it


SUPERSEDED = "superseded"  # passed its gate, but another run promoted a version first


def _plot_deltas(run_id: str, challenger: ArmEvaluation, champion: ArmEvaluation, cfg: Config) -> None:
    common, ia, ib = np.intersect1d(challenger.users, champion.users, return_indices=True)
    delta = challenger.values[ia] - champion.values[ib]
    mean, lo, hi = paired_bootstrap(delta, cfg.gate.n_bootstrap, cfg.gate.confidence, cfg.gate.seed)
    fig = delta_histogram(delta, mean, lo, hi, cfg.gate.confidence)
    tracking.log_figure(run_id, fig, "gate/per_user_delta.png")


def _log_candidate(
    cfg: Config, prepared: Prepared, challenger: Trained, exported: Exported, snapshot_hash: str, run_id: str
) -> str:
    """Checkpoint + serving bundle as run artifacts, the ONNX graph as the registered model."""
    work = tracking.scratch_dir("candidate")
    save_scorer(
        challenger.model, challenger.tokenizer, prepared.catalogue.item_ids, work / registry.CHECKPOINT_ARTIFACT
    )
    tracking.log_dir(run_id, work / registry.CHECKPOINT_ARTIFACT, registry.CHECKPOINT_ARTIFACT)
    chosen = {name: Path(exported.variants[name].path) for name in set(exported.serving.values()) if name != FP32}
    write_bundle(
        work / registry.SERVING_ARTIFACT,
        challenger.tokenizer,
        prepared.catalogue,
        cfg.data.max_history,
        cfg.model.max_text_tokens,
        snapshot_hash,
        exported.serving,
        chosen,
        item_tower(challenger.model),
    )
    tracking.log_dir(run_id, work / registry.SERVING_ARTIFACT, registry.SERVING_ARTIFACT)
    graph = onnx.load(str(exported.path))
    # the version's schema (signature) read from the graph itself; its input example a made-up request (an
    # instruction and items 1..3 as the history), never a user's: the registry keeps no one's history
    enc = challenger.tokenizer(
        ["I want something like what I watched recently."],
        truncation=True,
        max_length=cfg.model.max_text_tokens,
        return_tensors="np",
    )
    history = np.zeros((1, cfg.data.max_history), dtype=np.int64)
    recent = np.arange(1, min(3, prepared.catalogue.n_items) + 1, dtype=np.int64)
    history[0, -len(recent) :] = recent
    example = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
        "history": history,
    }
    # MLflow checks the example: it loads the model and scores it
    return tracking.log_onnx_model(
        run_id, graph, registry.ONNX_MODEL, registry.MODEL_NAME, example, [ONNX_RUNTIME_REQUIREMENT, "onnx"]
    )


def promote(cfg: Config, version: str, champion: str | None) -> None:
    """Every promotion (offline gate or online A/B gate): the guarded alias move, then the event that
    starts batch inference for the new champion."""
    registry.promote(version, champion, cfg.paths.home / "registry.lock")
    events.champion_promoted(version, champion, cfg.profile)


def _place(
    decision: Decision, version: str, champion: str | None, online_rollout: bool, cfg: Config
) -> tuple[str, dict[str, str]]:
    """Move aliases where `gate.placement` puts the version (a challenger gets its traffic share until the
    online gate decides). Returns the outcome recorded on the version, and its extra tags."""
    where = placement(decision, champion, online_rollout)
    if where == "champion":
        try:
            promote(cfg, version, champion)
        except registry.PromotionConflict:
            winner = registry.get_alias(registry.CHAMPION)
            return SUPERSEDED, {
                "superseded_by": winner.version if winner else "none",
                "next_step": f"this version passed its gate against {f'v{champion}' if champion else 'no champion'}, "
                f"but another run promoted v{winner.version if winner else '?'} meanwhile; run the pipeline again to "
                "gate it against that",
            }
        return decision.outcome, {}
    if where == "challenger" and champion is not None:
        since = datetime.now(UTC)
        exp = experiments.open_experiment(cfg, champion, version, since)  # sized now from the champion's traffic
        registry.mark_challenger(version)
        plan = (
            f"{exp.plan.users} users / {exp.plan.impressions} impressions"
            + (f", about {exp.plan.hours:.0f} h at current traffic" if exp.plan.hours else "")
            if exp.plan
            else "sized at the first look (no champion traffic yet)"
        )
        return "challenger", {
            "challenger_since": since.isoformat(),
            "online_gate": "pending",
            "online_experiment": exp.id,
            "online_plan": plan,
        }
    return decision.outcome, {}


@task(name="gate", cache_policy=NO_CACHE)
def gate_and_register(
    cfg: Config,
    prepared: Prepared,
    challenger: Trained,
    evaluations: Evaluations,
    exported: Exported,
    snapshot_hash: str,
    run_id: str,
    online_rollout: bool = False,
) -> GateResult:
    """Offline gate, registration, aliases. online_rollout: a passing candidate goes to the A/B test, not to champion."""
    logger = get_run_logger()
    reports, champion_ref = evaluations.reports, evaluations.champion
    chal = arm_of(reports[CHALLENGER], latency=exported.latency_ms)
    champ = None
    if champion_ref is not None:
        champ = arm_of(reports[CHAMPION], champion_ref.version, exported.champion_latency_ms)
        _plot_deltas(run_id, chal, champ, cfg)
    baselines = {name: arm_of(reports[name]) for name in BASELINES if name in reports}
    # per type, the references that can serve it: the baselines and the challenger without the words
    references = baselines | {name: arm_of(report) for name, report in evaluations.references.items()}
    policy = cfg.gate.model_copy(update={"epsilon": cfg.gate.online.offline_epsilon}) if online_rollout else cfg.gate
    decision = decide(chal, floor_baseline(baselines, policy), policy, champ, exported.parity, references)

    version = _log_candidate(cfg, prepared, challenger, exported, snapshot_hash, run_id)
    champion = champion_ref.version if champion_ref else None
    outcome, placed = _place(decision, version, champion, online_rollout, cfg)
    tags = {
        "gate_outcome": outcome,
        "snapshot_hash": snapshot_hash,
        "run_id": run_id,
        "profile": cfg.profile,
        "evaluated_against": champion or "none",
        "feedback_until": challenger.feedback_until or "",
        **placed,
    }
    verdicts = {
        "challenger": "CHALLENGER (offline checks passed; the A/B test against the champion decides: planned "
        f"{placed.get('online_plan')}, a fresh split of users, no promotion before "
        f"{cfg.gate.online.min_duration_hours:g} h)",
        SUPERSEDED: f"SUPERSEDED, not promoted: {placed.get('next_step')}",
    }
    summary = decision.summary(verdicts.get(outcome), bullets=True)
    registry.describe(version, summary, tags)
    tracking.log_json(run_id, {**decision.to_dict(), "version": version}, "gate/decision.json")
    tracking.log_metrics(run_id, {"gate/promoted": float(decision.promote and not online_rollout)})
    tracking.set_tags(run_id, {"gate_outcome": outcome})
    current = registry.aliases()
    logger.info("gate: %s -> v%s; aliases now %s", outcome, version, current)
    if outcome == SUPERSEDED:
        logger.warning("v%s not promoted: %s", version, placed["next_step"])
    return GateResult(decision, version, current, outcome, placed.get("next_step"))
