"""The HTTP service: recommendations from the registered ONNX models, split between
champion and challenger, and a durable, append-only feedback store.

Models are swapped whole when an alias moves (a background thread re-reads the
registry): a request holds the slots it started with, so a reload never drops
or mixes a request. Every served list and every feedback event is on disk
(fsync) before the response leaves.
"""

import logging
import threading
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Literal

import polars as pl
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from instructrec import schema
from instructrec.abtest import CHALLENGER_ARM, CHAMPION_ARM, assign_arm
from instructrec.config import Config
from instructrec.eventlog import EventLog, iter_records
from instructrec.feedback import FEEDBACK_LOG, IMPRESSION_LOG, read_store
from instructrec.recommend import Recommender
from model_registry import registry
from model_registry.serving import load_version
from tasks import events

log = logging.getLogger("instructrec.service")
ITEM_KINDS = tuple(k for k in schema.FEEDBACK_KINDS if k != "instruction")
Kind = Literal[schema.FEEDBACK_KINDS]  # the feedback suite checks the same set
REMEMBERED_REQUESTS = 200_000


class ModelSlots:
    """The champion and (when one is registered) the challenger, re-read from the registry's aliases."""

    def __init__(self, cfg: Config, load: Callable[[registry.VersionRef], Recommender] | None = None):
        self.cfg = cfg
        self._load = load or (lambda ref: load_version(cfg, ref))
        self._slots: dict[str, Recommender] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def current(self) -> dict[str, Recommender]:
        return self._slots  # replaced whole by refresh(), never mutated

    def refresh(self) -> bool:
        """Load what the aliases point at now; on any failure keep serving what is loaded. True if anything moved."""
        try:
            champion, challenger = registry.get_alias(registry.CHAMPION), registry.get_alias(registry.CHALLENGER)
            wanted = {CHAMPION_ARM: champion}
            if challenger is not None and champion is not None and challenger.version != champion.version:
                wanted[CHALLENGER_ARM] = challenger
            have = {arm: rec.version for arm, rec in self._slots.items()}
            if {arm: ref.version for arm, ref in wanted.items() if ref} == have:
                return False
            loaded = {rec.version: rec for rec in self._slots.values()}
            slots = {arm: loaded.get(ref.version) or self._load(ref) for arm, ref in wanted.items() if ref}
        except Exception as exc:  # registry unreachable, download failed: keep the loaded models
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("model reload failed, still serving %s: %s", self.versions(), self.last_error)
            return False
        self._slots, self.last_error = slots, None
        log.info("serving %s", self.versions())
        return True

    def versions(self) -> dict[str, str]:
        return {arm: rec.version for arm, rec in self._slots.items()}

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="alias-poller", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.cfg.serve.reload_seconds):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()


@dataclass(frozen=True)
class Served:
    user_id: str
    arm: str
    model_version: str
    items: frozenset[str]


class FinetuneTrigger:
    """Emits the fine-tuning event each time `threshold` new events have been stored."""

    def __init__(self, threshold: int, emit: Callable[[int], object]):
        self.threshold, self.emit, self.pending = threshold, emit, 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.pending += 1
            if self.pending < self.threshold:
                return
            n, self.pending = self.pending, 0
        threading.Thread(target=self.emit, args=(n,), daemon=True).start()


def _models(cfg: Config):
    s = cfg.serve
    UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=s.max_user_id_chars)]
    Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=s.max_text_chars)]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: UserId
        instruction: Text | None = Field(None, description="the user's own words, e.g. 'a funny animated film'")
        k: int = Field(10, ge=1, le=s.max_k)

    class FeedbackRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        request_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
        user_id: UserId
        kind: Kind
        item_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
        text: Text | None = None
        event_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
            None, description="client-chosen id: a retried event with the same id is stored once")

        @model_validator(mode="after")
        def _kind_needs(self):
            if self.kind in ITEM_KINDS and self.item_id is None:
                raise ValueError(f"kind {self.kind!r} needs item_id (the recommended item it is about)")
            if self.kind == "instruction" and self.text is None:
                raise ValueError("kind 'instruction' needs text (the user's request)")
            return self

    return RecommendRequest, FeedbackRequest


def create_app(cfg: Config, slots: ModelSlots | None = None, emit: Callable[[int], object] | None = None,
               poll: bool = True) -> FastAPI:
    """emit(n): called every feedback.trigger_events stored events (default: the Prefect event prefect.yaml's
    fine-tuning trigger listens for)."""
    RecommendRequest, FeedbackRequest = _models(cfg)
    slots = slots or ModelSlots(cfg)
    store = read_store(cfg.paths.feedback)  # batch files too: a retried event id is refused wherever it is stored
    feedback_log = EventLog(cfg.paths.feedback, FEEDBACK_LOG, key=schema.EVENT_ID, seen=set(store[schema.EVENT_ID]))
    impression_log = EventLog(cfg.paths.feedback, IMPRESSION_LOG)
    requests: OrderedDict[str, Served] = OrderedDict()
    judged: defaultdict[str, set[str]] = defaultdict(set)  # user -> items they reacted to (not shown again)
    trigger = FinetuneTrigger(cfg.feedback.trigger_events, emit or (lambda n: events.feedback_threshold(n, cfg.profile)))
    requests_lock = threading.Lock()

    def remember(request_id: str, served: Served) -> None:
        with requests_lock:
            requests[request_id] = served
            while len(requests) > REMEMBERED_REQUESTS:
                requests.popitem(last=False)

    for row in iter_records(cfg.paths.feedback, IMPRESSION_LOG):  # a restarted service still knows its requests
        remember(row[schema.REQUEST_ID], Served(row[schema.USER], row[schema.ARM], row[schema.MODEL_VERSION],
                                                frozenset(row["items"])))
    for user, item in store.filter(pl.col(schema.ITEM).is_not_null()).select(schema.USER, schema.ITEM).iter_rows():
        judged[user].add(item)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:  # start-up blocks until the models are loaded
        slots.start() if poll else slots.refresh()
        yield
        slots.stop()
        feedback_log.close()
        impression_log.close()

    app = FastAPI(title="InstructRec", version="1", lifespan=lifespan,
                  description="Instruction-following recommendations, champion/challenger traffic split, feedback.")

    @app.get("/health")
    def health() -> dict:
        current = slots.current()
        return {"status": "ok" if CHAMPION_ARM in current else "no_model",
                "models": {arm: {"version": r.version, "variant": r.variant, "provider": r.session.provider}
                           for arm, r in current.items()},
                "experiment": cfg.serve.experiment,
                "challenger_share": cfg.serve.challenger_share if CHALLENGER_ARM in current else 0.0,
                "feedback_events": len(feedback_log), "reload_error": slots.last_error}

    @app.post("/recommend")
    def recommend(req: RecommendRequest) -> dict:
        current = slots.current()
        if CHAMPION_ARM not in current:
            raise HTTPException(503, "no champion model is registered yet; run the training pipeline first")
        share = cfg.serve.challenger_share if CHALLENGER_ARM in current else 0.0
        arm = assign_arm(req.user_id, cfg.serve.experiment, share)
        rec = current[arm]
        seen = tuple(judged.get(req.user_id, ()))  # a copy: feedback may add to the set meanwhile
        out = rec.recommend(req.user_id, req.instruction, req.k, exclude=seen)
        request_id = uuid.uuid4().hex
        items = [row["item_id"] for row in out["items"]]
        impression_log.append({schema.REQUEST_ID: request_id, schema.USER: req.user_id, schema.ARM: arm,
                               schema.MODEL_VERSION: rec.version, "items": items, "instruction": req.instruction,
                               schema.TIMESTAMP: datetime.now(UTC).isoformat()})
        remember(request_id, Served(req.user_id, arm, rec.version, frozenset(items)))
        return {"request_id": request_id, "arm": arm, **out}

    @app.post("/feedback")
    def feedback(ev: FeedbackRequest) -> dict:
        served = requests.get(ev.request_id)
        if served is None:
            raise HTTPException(404, f"unknown request_id {ev.request_id!r}: feedback must answer a served /recommend")
        if served.user_id != ev.user_id:
            raise HTTPException(422, f"request {ev.request_id} was served to user {served.user_id!r}, not {ev.user_id!r}")
        if ev.item_id is not None and ev.item_id not in served.items:
            raise HTTPException(422, f"item {ev.item_id!r} was not recommended in request {ev.request_id}")
        event_id = ev.event_id or uuid.uuid4().hex
        stored = feedback_log.append({schema.EVENT_ID: event_id, schema.USER: ev.user_id, schema.ITEM: ev.item_id,
                                      schema.KIND: ev.kind, schema.TEXT: ev.text, schema.MODEL_VERSION: served.model_version,
                                      schema.ARM: served.arm, schema.REQUEST_ID: ev.request_id,
                                      schema.TIMESTAMP: datetime.now(UTC).isoformat()})
        if stored:
            if ev.item_id is not None:
                judged[ev.user_id].add(ev.item_id)
            trigger.add()
        return {"event_id": event_id, "stored": stored, "duplicate": not stored, "arm": served.arm,
                "model_version": served.model_version}

    app.state.slots, app.state.feedback_log = slots, feedback_log
    return app

