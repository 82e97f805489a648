"""The HTTP service: recommendations from the registered ONNX models, split between
champion and challenger, and a durable, append-only feedback store.

Models are swapped whole when an alias moves (a background thread re-reads the
registry): a request holds the slots it started with, so a reload never drops
or mixes a request. Every served list and every feedback event is on disk
(fsync) before the response leaves.

This module builds the app; its parts live beside it: state.py (models, sessions, trigger), schemas.py (bodies),
security.py (token and body size), deps.py (what routes share) and routes/ (one module per concern).
"""

import gc
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from adapters import events
from instructrec.config import Config
from instructrec.data import schema
from instructrec.online.eventlog import EventLog
from instructrec.online.feedback import FEEDBACK_LOG, IMPRESSION_LOG, read_store
from model_registry import registry
from service.routes import admin, feedback, health, recommend
from service.schemas import request_models
from service.security import Guard
from service.state import FinetuneTrigger, ModelSlots, SharedState

__all__ = ["SERVE_ENV", "FinetuneTrigger", "ModelSlots", "app_from_environment", "create_app"]  # ops.cli, tests

log = logging.getLogger("instructrec.service")
SERVE_ENV = "INSTRUCTREC_SERVE"  # {"profile", "overrides"} for each worker process (`instructrec serve` sets it)


def create_app(
    cfg: Config, slots: ModelSlots | None = None, emit: Callable[[int], object] | None = None, poll: bool = True
) -> FastAPI:
    """emit(n): called every feedback.trigger_events stored events (default: the Prefect event prefect.yaml's
    fine-tuning trigger listens for)."""
    app = FastAPI(
        title="InstructRec",
        version="1",
        lifespan=lifespan,
        description="Instruction-following recommendations, champion/challenger traffic split, feedback "
        "that shapes the same user's next list.",
    )
    _open_state(app, cfg, slots or ModelSlots(cfg), emit or (lambda n: events.feedback_threshold(n, cfg.profile)))
    app.state.poll = poll
    app.add_middleware(Guard, serve=cfg.serve, token=os.environ.get(cfg.serve.api_token_env) or None)
    models = request_models(cfg.serve)
    for router in (health.router(), recommend.router(models), admin.router(), feedback.router(models)):
        app.include_router(router)
    return app


def _open_state(app: FastAPI, cfg: Config, slots: ModelSlots, emit: Callable[[int], object]) -> None:
    """Everything the routes share, on app.state (see service.deps): opened now, so a restarted service knows every
    request served and every session's reactions before it answers; the tokens are read once, here."""
    store = read_store(cfg.paths.feedback)  # batch files too: a retried event id is refused wherever it is stored
    state = app.state
    state.cfg, state.slots = cfg, slots
    state.feedback_log = EventLog(
        cfg.paths.feedback, FEEDBACK_LOG, key=schema.EVENT_ID, seen=set(store[schema.EVENT_ID])
    )
    state.impression_log = EventLog(cfg.paths.feedback, IMPRESSION_LOG)
    state.shared = SharedState(cfg)
    state.shared.sync()
    state.trigger = FinetuneTrigger(cfg.feedback.trigger_events, emit)
    state.admin_token = os.environ.get(cfg.serve.admin_token_env) or None


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start-up blocks until the models are loaded (then, with poll, a thread follows the aliases); on SIGTERM
    uvicorn stops accepting and lets in-flight requests finish (serve.drain_seconds) before the logs close."""
    state = app.state
    state.slots.start() if state.poll else state.slots.refresh()
    settle_heap()
    yield
    state.slots.stop()
    state.feedback_log.close()
    state.impression_log.close()
    log.info("stopped: in-flight requests answered, feedback and impression logs closed")


def settle_heap() -> None:
    """Move what start-up built (imported modules, the loaded models: some 700k objects) out of the collector's
    reach: a full collection otherwise rescans them all, a pause of ~250 ms on 2 cores (measured in-process).
    How often such collections come under traffic was not measured (8,000 sequential requests triggered none).
    Those objects live as long as the process (a model replaced later is freed by reference counting; the
    ones a reload loads are not frozen)."""
    gc.collect()
    gc.freeze()
    log.info("%d objects frozen out of garbage collection", gc.get_freeze_count())


def app_from_environment() -> FastAPI:
    """The app of one worker process of `instructrec serve` with serve.workers > 1 (uvicorn factory)."""
    import json

    from instructrec.config import load_config

    spec = json.loads(os.environ[SERVE_ENV])
    cfg = load_config(spec["profile"], overrides=spec["overrides"])
    registry.connect(cfg.paths.tracking_uri)
    return create_app(cfg)
