"""GET /health: open to probes (no token), and what an operator needs to see at a glance."""

from fastapi import APIRouter

from instructrec.online.abtest import CHALLENGER_ARM, CHAMPION_ARM, experiment_id
from service.deps import Cfg, FeedbackLog, Shared, Slots
from service.schemas import HealthResponse, ModelInfo


def health(cfg: Cfg, slots: Slots, shared: Shared, feedback_log: FeedbackLog) -> HealthResponse:
    current = slots.current()
    return HealthResponse(
        status="ok" if CHAMPION_ARM in current else "no_model",
        models={
            arm: ModelInfo(
                version=r.version,
                variant=r.variant,
                provider=r.session.provider,
                batch_requests=r.batching.max_rows if r.batching else 1,
                batched_calls=r.batcher.calls if r.batcher else 0,
                mean_batch=r.batcher.mean_rows if r.batcher else None,
            )
            for arm, r in current.items()
        },
        experiment=experiment_id(
            cfg.serve.experiment, current[CHALLENGER_ARM].version if CHALLENGER_ARM in current else None
        ),
        challenger_share=cfg.serve.challenger_share if CHALLENGER_ARM in current else 0.0,
        feedback_events=len(feedback_log),
        sessions=len(shared.book),
        registry="ok" if slots.registry_reachable else "unreachable",
        reload_error=slots.last_error,
    )


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/health", health, methods=["GET"])
    return r
