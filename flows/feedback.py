"""The feedback loop flow: decide the running A/B test, then tune a new challenger on new feedback.

Triggered by the service's event when enough feedback has arrived (see
prefect.yaml), hourly as a check, or on demand (`instructrec finetune`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefect import flow

from adapters import tracking
from instructrec.config import Config, Profile, load_config
from model_registry import registry
from model_registry.serving import NoChampion
from tasks.data import ingest_validate_prepare
from tasks.evaluation import evaluate_models, export_challenger
from tasks.online import finetune_from_champion, new_feedback, online_gate
from tasks.promotion import gate_and_register


@dataclass
class LoopSummary:
    run_id: str
    online_outcome: str  # of the A/B test that was running (no_challenger when none)
    new_events: int
    registered: str | None = None  # version tuned in this run
    offline_outcome: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"A/B gate: {self.online_outcome}"] + [f"  - {r}" for r in self.reasons]
        if self.registered:
            lines.append(
                f"Tuned on {self.new_events} new events -> v{self.registered} (offline: {self.offline_outcome})"
            )
        else:
            lines.append(f"No new challenger ({self.new_events} new events)")
        return "\n".join(lines + [f"Aliases: {self.aliases}"])


@flow(name="instructrec-feedback", flow_run_name="feedback-{profile}", log_prints=True)
def feedback_loop(
    profile: Profile = "cpu",
    data: str | None = None,
    force: bool = False,
    overrides: dict | None = None,
    trigger: str = "manual",
) -> LoopSummary:
    """online gate (one look at the running A/B test; trigger: schedule, event or manual) -> (enough new feedback?) ingest -> validate -> prepare -> tune from champion -> evaluate -> export
    -> offline gate; a passing candidate becomes the challenger and gets its share of traffic."""
    cfg = load_config(
        profile, data=data or _champion_source(load_config(profile, overrides=overrides)), overrides=overrides
    )
    with tracking.pipeline_run(cfg, f"feedback-{cfg.profile}", {"profile": cfg.profile, "flow": "feedback"}) as run_id:
        summary = _loop(cfg, run_id, force, trigger)
        tracking.describe_run(run_id, f"```\n{summary.render()}\n```")
        return summary


def _loop(cfg: Config, run_id: str, force: bool, trigger: str) -> LoopSummary:
    online = online_gate(cfg, run_id, trigger)
    summary = LoopSummary(run_id, online.outcome, 0, reasons=online.decision.reasons if online.decision else [])
    if online.outcome == "continue":  # keep the running test; collect more traffic first
        summary.aliases = registry.aliases()
        return summary
    champion = registry.get_alias(registry.CHAMPION)
    if champion is None:
        raise NoChampion("no champion to tune; run the training pipeline first")
    events, until = new_feedback(cfg, champion)
    summary.new_events = events.height
    if summary.new_events == 0 or (summary.new_events < cfg.feedback.trigger_events and not force):
        summary.aliases = registry.aliases()
        return summary
    snap, prepared = ingest_validate_prepare(cfg, run_id)
    with tracking.timed(run_id, "finetune_online_feedback"):
        tuned = finetune_from_champion(cfg, prepared, champion, events, until, run_id)
    with tracking.timed(run_id, "evaluate"):
        evaluations = evaluate_models(cfg, prepared, tuned, None, run_id)
    with tracking.timed(run_id, "export_onnx"):
        exported = export_challenger(cfg, prepared, tuned, evaluations.champion, run_id)
    with tracking.timed(run_id, "gate"):
        gate = gate_and_register(cfg, prepared, tuned, evaluations, exported, snap.hash, run_id, online_rollout=True)
    summary.registered, summary.offline_outcome, summary.aliases = gate.version, gate.outcome, gate.aliases
    return summary


def _champion_source(cfg) -> str | None:
    """By default the loop tunes on the data source the champion was trained on."""
    registry.connect(cfg.paths.tracking_uri)
    champion = registry.get_alias(registry.CHAMPION)
    return registry.client().get_run(champion.run_id).data.params.get("data.source") if champion else None
