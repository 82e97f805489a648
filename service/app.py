"""The HTTP service: recommendations from the registered ONNX models, split between
champion and challenger, and a durable, append-only feedback store.

Models are swapped whole when an alias moves (a background thread re-reads the
registry): a request holds the slots it started with, so a reload never drops
or mixes a request. Every served list and every feedback event is on disk
(fsync) before the response leaves.
"""

# The request models are built per config (its limits become field constraints), so their types are runtime values.
# pyright: reportInvalidTypeForm=false

import logging
import os
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import polars as pl
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from adapters import events
from instructrec import schema
from instructrec.abtest import CHALLENGER_ARM, CHAMPION_ARM, assign_arm, bucket, experiment_id
from instructrec.config import Config, ServeConfig
from instructrec.erasure import erase_user
from instructrec.eventlog import EventLog, LogTail, StoreWriteError
from instructrec.feedback import FEEDBACK_LOG, IMPRESSION_LOG, STORE_GLOB, read_store
from instructrec.recommend import Adaptation, Recommender
from instructrec.session import SessionBook, UserSession
from model_registry import registry
from model_registry.serving import load_version

log = logging.getLogger("instructrec.service")
ITEM_KINDS = tuple(k for k in schema.FEEDBACK_KINDS if k != "instruction")
Kind = Literal[schema.FEEDBACK_KINDS]  # the feedback suite checks the same set
REMEMBERED_REQUESTS = 200_000
SERVE_ENV = "INSTRUCTREC_SERVE"  # {"profile", "overrides"} for each worker process (`instructrec serve` sets it)


RequestSource = Literal["request", "session", "none", "more_like_this"]  # where the served list's words came from


class ModelSlots:
    """The champion and (when one is registered) the challenger, re-read from the registry's aliases."""

    def __init__(self, cfg: Config, load: Callable[[registry.VersionRef], Recommender] | None = None):
        self.cfg = cfg
        self._load = load or (lambda ref: load_version(cfg, ref))
        self._slots: dict[str, Recommender] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.registry_reachable = True  # False while the registry cannot be asked (the loaded models keep serving)

    def current(self) -> dict[str, Recommender]:
        return self._slots  # replaced whole by refresh(), never mutated

    def refresh(self) -> bool:
        """Load what the aliases point at now; on any failure keep serving what is loaded. True if anything moved."""
        try:
            champion, challenger = registry.get_alias(registry.CHAMPION), registry.get_alias(registry.CHALLENGER)
            self.registry_reachable = True
            wanted = {CHAMPION_ARM: champion}
            if challenger is not None and champion is not None and challenger.version != champion.version:
                wanted[CHALLENGER_ARM] = challenger
            have = {arm: rec.version for arm, rec in self._slots.items()}
            if {arm: ref.version for arm, ref in wanted.items() if ref} == have:
                self.last_error = None
                return False
            loaded = {rec.version: rec for rec in self._slots.values()}
            slots = {arm: loaded.get(ref.version) or self._load(ref) for arm, ref in wanted.items() if ref}
        except Exception as exc:  # registry unreachable, download failed: keep the loaded models
            self.registry_reachable = not isinstance(exc, registry.RegistryUnavailable)
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


class ListedItem(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float = Field(description="the model's score (similar items: cosine; popular list: log popularity)")
    reason: str = Field(description="why it is listed, in words a person reads")
    because: str | None = Field(None, description="the history item that most supports it (item-tower similarity)")
    matches: list[str] | None = Field(None, description="attributes of the item the request names")


class RecommendResponse(BaseModel):
    request_id: str = Field(description="quote it in /feedback")
    arm: str
    user_id: str
    known_user: bool
    instruction: str = Field(description="what the model read, titles in place of the history")
    instruction_type: str
    understood: dict | None = Field(
        None,
        description="what the request says for certain, applied as constraints: genres, exclude_genres, years, "
        "like (named titles), notes",
    )
    request_source: RequestSource
    session_adapted: bool = Field(description="whether this user's reactions this session shape their lists")
    model_version: str
    provider: str
    variant: str
    items: list[ListedItem]


class SimilarResponse(BaseModel):
    item_id: str
    title: str
    model_version: str
    items: list[ListedItem]


class FeedbackResponse(BaseModel):
    event_id: str
    stored: bool
    duplicate: bool
    arm: str
    model_version: str


class ModelInfo(BaseModel):
    version: str
    variant: str
    provider: str


class ErasureResponse(BaseModel):
    erasure_id: str
    user_sha256: str = Field(description="the audit log keeps this digest, not the id")
    requested_by: str
    timestamp: str
    events_removed: int
    impressions_removed: int
    files_rewritten: int


class HealthResponse(BaseModel):
    status: Literal["ok", "no_model"]
    models: dict[str, ModelInfo]
    experiment: str
    challenger_share: float
    feedback_events: int
    sessions: int = Field(description="users with reactions this service knows of (all processes)")
    registry: Literal["ok", "unreachable"] = Field(description="unreachable: serving the models loaded before")
    reload_error: str | None


def adapts(s: ServeConfig, user_id: str) -> bool:
    """Whether the user's session reactions shape their lists (an experiment of its own when session_share < 1)."""
    return s.adapt_sessions and bucket(user_id, f"{s.experiment}-session") < s.session_share


def _models(cfg: Config):
    s = cfg.serve
    UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=s.max_user_id_chars)]
    Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=s.max_text_chars)]
    ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: UserId
        instruction: Text | None = Field(None, description="the user's own words, e.g. 'a funny animated film'")
        k: int = Field(10, ge=1, le=s.max_k)
        like_item_id: ItemId | None = Field(None, description="more like this item: its nearest items, unseen ones")
        diversity: float | None = Field(
            None, ge=0.0, le=1.0, description="MMR re-ranking weight (default serve.diversity)"
        )

    class FeedbackRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        request_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
        user_id: UserId
        kind: Kind
        item_id: ItemId | None = None
        text: Text | None = None
        event_id: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = Field(
            None, description="client-chosen id: a retried event with the same id is stored once"
        )

        @model_validator(mode="after")
        def _kind_needs(self):
            if self.kind in ITEM_KINDS and self.item_id is None:
                raise ValueError(f"kind {self.kind!r} needs item_id (the recommended item it is about)")
            if self.kind == "instruction" and self.text is None:
                raise ValueError("kind 'instruction' needs text (the user's request)")
            return self

    return RecommendRequest, FeedbackRequest


class SharedState:
    """Requests served and sessions, as every process of the service sees them: folded from the logs they share."""

    def __init__(self, cfg: Config):
        self.feedback_dir = cfg.paths.feedback
        self.ttl = timedelta(seconds=cfg.serve.request_ttl_seconds)
        self._lock = threading.Lock()
        self._start_over()

    def _start_over(self) -> None:
        """Empty state, to be folded from the logs from their start (at start-up, and after an erasure)."""
        self.book = SessionBook()
        self.requests: OrderedDict[str, Served] = OrderedDict()
        self._events = LogTail(self.feedback_dir, FEEDBACK_LOG)
        self._impressions = LogTail(self.feedback_dir, IMPRESSION_LOG)
        for f in sorted(self.feedback_dir.glob(STORE_GLOB)):  # batch files (imports) are never appended to
            self.book.extend(pl.read_parquet(f).to_dicts())

    def sync(self) -> None:
        """Fold in what any process appended since the last call (a few stat calls when nothing did); after an
        erasure replaced a segment, fold everything again, so no process keeps an erased user's session."""
        with self._lock:
            if self._events.rewritten() or self._impressions.rewritten():
                self._start_over()
            self.book.extend(self._events.new_records())
            for row in self._impressions.new_records():
                self.requests[row[schema.REQUEST_ID]] = Served(
                    row[schema.USER], row[schema.ARM], row[schema.MODEL_VERSION], frozenset(row["items"])
                )
            while len(self.requests) > REMEMBERED_REQUESTS:
                self.requests.popitem(last=False)

    def remember(self, request_id: str, served: Served) -> None:
        with self._lock:
            self.requests[request_id] = served

    def session(self, user_id: str) -> UserSession:
        return self.book.get(user_id) or UserSession()

    def served(self, request_id: str) -> Served | None:
        if request_id not in self.requests:
            self.sync()  # served by another process a moment ago
        return self.requests.get(request_id)


def create_app(
    cfg: Config, slots: ModelSlots | None = None, emit: Callable[[int], object] | None = None, poll: bool = True
) -> FastAPI:
    """emit(n): called every feedback.trigger_events stored events (default: the Prefect event prefect.yaml's
    fine-tuning trigger listens for)."""
    RecommendRequest, FeedbackRequest = _models(cfg)
    slots = slots or ModelSlots(cfg)
    store = read_store(cfg.paths.feedback)  # batch files too: a retried event id is refused wherever it is stored
    feedback_log = EventLog(cfg.paths.feedback, FEEDBACK_LOG, key=schema.EVENT_ID, seen=set(store[schema.EVENT_ID]))
    impression_log = EventLog(cfg.paths.feedback, IMPRESSION_LOG)
    shared = SharedState(cfg)
    shared.sync()  # a restarted service knows every request served and every session's reactions
    trigger = FinetuneTrigger(
        cfg.feedback.trigger_events, emit or (lambda n: events.feedback_threshold(n, cfg.profile))
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:  # start-up blocks until the models are loaded
        slots.start() if poll else slots.refresh()
        yield  # on SIGTERM uvicorn stops accepting and lets in-flight requests finish (serve.drain_seconds) first
        slots.stop()
        feedback_log.close()
        impression_log.close()
        log.info("stopped: in-flight requests answered, feedback and impression logs closed")

    app = FastAPI(
        title="InstructRec",
        version="1",
        lifespan=lifespan,
        description="Instruction-following recommendations, champion/challenger traffic split, feedback "
        "that shapes the same user's next list.",
    )

    token = os.environ.get(cfg.serve.api_token_env) or None
    open_paths = {"/health"}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        """Every endpoint but /health needs the API token when one is set; bodies are bounded before reading."""
        if token is not None and request.url.path not in open_paths:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse(
                    {
                        "detail": f"missing or wrong API token: send 'Authorization: Bearer <token>' "
                        f"(the service's token is in ${cfg.serve.api_token_env})"
                    },
                    401,
                )
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "a request body needs a Content-Length"}, 411)
            if int(length) > cfg.serve.max_body_bytes:
                return JSONResponse(
                    {
                        "detail": f"request body of {length} bytes is over the limit of "
                        f"{cfg.serve.max_body_bytes} (serve.max_body_bytes)"
                    },
                    413,
                )
        return await call_next(request)

    def champion_or_503() -> dict[str, Recommender]:
        current = slots.current()
        if CHAMPION_ARM not in current:
            raise HTTPException(503, "no champion model is registered yet; run the training pipeline first")
        return current

    @app.get("/health")
    def health() -> HealthResponse:
        current = slots.current()
        return HealthResponse(
            status="ok" if CHAMPION_ARM in current else "no_model",
            models={
                arm: ModelInfo(version=r.version, variant=r.variant, provider=r.session.provider)
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

    @app.post("/recommend")
    def recommend(req: RecommendRequest) -> RecommendResponse:
        began = time.perf_counter()
        current = champion_or_503()
        arm = arm_of(req.user_id, current)
        rec = current[arm]
        try:
            out, instruction, source, adapted = answer(req, rec)
        except HTTPException:  # the client's mistake (an unknown item, ...): not the model's error
            raise
        except Exception:
            stored(impression_log, served_record(uuid.uuid4().hex, req.user_id, arm, rec, [], None, False, began, True))
            raise
        request_id = uuid.uuid4().hex
        items = [row["item_id"] for row in out["items"]]
        stored(impression_log, served_record(request_id, req.user_id, arm, rec, items, instruction, adapted, began))
        shared.remember(request_id, Served(req.user_id, arm, rec.version, frozenset(items)))
        return RecommendResponse(request_id=request_id, arm=arm, request_source=source, session_adapted=adapted, **out)

    def arm_of(user_id: str, current: dict[str, Recommender]) -> str:
        """The user's arm in the running test: a fresh split per challenger version (its own salt)."""
        if CHALLENGER_ARM not in current:
            return CHAMPION_ARM
        salt = experiment_id(cfg.serve.experiment, current[CHALLENGER_ARM].version)
        return assign_arm(user_id, salt, cfg.serve.challenger_share)

    def served_record(
        request_id: str,
        user_id: str,
        arm: str,
        rec: Recommender,
        items: list[str],
        instruction: str | None,
        adapted: bool,
        began: float,
        error: bool = False,
    ) -> dict:
        return {
            schema.REQUEST_ID: request_id,
            schema.USER: user_id,
            schema.ARM: arm,
            schema.MODEL_VERSION: rec.version,
            "items": items,
            "instruction": instruction,
            "session_adapted": adapted,
            "latency_ms": (time.perf_counter() - began) * 1000.0,
            "error": error,
            schema.TIMESTAMP: datetime.now(UTC).isoformat(),
        }

    def answer(req: RecommendRequest, rec: Recommender) -> tuple[dict, str | None, RequestSource, bool]:
        """(the list, the instruction it answered, where that came from, whether the session adapted it)."""
        shared.sync()
        adapted = adapts(cfg.serve, req.user_id)
        session = shared.session(req.user_id)
        seen = tuple(session.judged)  # reacted-to items are never shown again, in either session arm
        source: RequestSource
        if req.like_item_id is not None:
            out = more_like_this(rec, req.user_id, req.like_item_id, req.k, seen)
            instruction, source = None, "more_like_this"
        else:
            source = "request" if req.instruction else "none"
            instruction = req.instruction
            if instruction is None and adapted:
                instruction = session.standing_request(datetime.now(UTC), shared.ttl)
                source = "session" if instruction else "none"
            out = rec.recommend(
                req.user_id,
                instruction,
                req.k,
                exclude=seen,
                liked=session.liked if adapted else (),
                disliked=session.disliked if adapted else (),
                adapt=Adaptation.of(cfg.serve, req.diversity),
            )
        return out, instruction, source, adapted

    def stored(event_log: EventLog, record: dict) -> bool:
        """Append durably, or answer 503: a list or event that is not on disk is never acknowledged."""
        try:
            return event_log.append(record)
        except StoreWriteError as exc:
            log.error("%s", exc)
            raise HTTPException(
                503,
                f"the service could not store this on disk ({exc.strerror}); nothing was "
                "kept - retry later with the same event_id",
            ) from None

    def nearest(rec: Recommender, item_id: str, k: int, exclude: tuple[str, ...] = ()) -> dict:
        try:
            return rec.similar(item_id, k, exclude)
        except KeyError:
            raise HTTPException(404, f"unknown item_id {item_id!r}: not in model v{rec.version}'s catalogue") from None
        except LookupError as exc:
            raise HTTPException(409, str(exc)) from None

    def more_like_this(rec: Recommender, user_id: str, item_id: str, k: int, seen: tuple[str, ...]) -> dict:
        history = tuple(rec.catalogue.item_ids[i - 1] for i in rec.histories.get(user_id, ()))
        similar = nearest(rec, item_id, k, seen + history)
        head = {
            "user_id": user_id,
            "known_user": user_id in rec.histories,
            "instruction_type": "more_like_this",
            "instruction": f"more like {similar['title']}",
            "provider": rec.session.provider,
            "variant": rec.variant,
        }
        return {**head, "model_version": rec.version, "items": similar["items"]}

    admin_token = os.environ.get(cfg.serve.admin_token_env) or None

    @app.delete("/users/{user_id}")
    def forget(user_id: str, x_admin_token: Annotated[str | None, Header()] = None) -> ErasureResponse:
        """Erase a user's feedback and impressions (admin token only): gone from serving and from every later
        training run; the erasure itself is kept in the audit log."""
        if admin_token is None:
            raise HTTPException(403, f"erasure over HTTP is off: set ${cfg.serve.admin_token_env} for the service")
        if not secrets.compare_digest((x_admin_token or "").encode(), admin_token.encode()):
            raise HTTPException(403, f"erasure needs the admin token (${cfg.serve.admin_token_env}) in X-Admin-Token")
        erasure = erase_user(cfg.paths.feedback, user_id, requested_by="api")
        shared.sync()
        log.info("erased user %s: %s", erasure.user_sha256[:12], erasure)
        return ErasureResponse(**asdict(erasure))

    @app.get("/items/{item_id}/similar")
    def similar(item_id: str, k: Annotated[int, Query(ge=1, le=cfg.serve.max_k)] = 10) -> SimilarResponse:
        return SimilarResponse(**nearest(champion_or_503()[CHAMPION_ARM], item_id, k))

    @app.post("/feedback")
    def feedback(ev: FeedbackRequest) -> FeedbackResponse:
        served = shared.served(ev.request_id)
        if served is None:
            raise HTTPException(404, f"unknown request_id {ev.request_id!r}: feedback must answer a served /recommend")
        if served.user_id != ev.user_id:
            raise HTTPException(
                422, f"request {ev.request_id} was served to user {served.user_id!r}, not {ev.user_id!r}"
            )
        if ev.item_id is not None and ev.item_id not in served.items:
            raise HTTPException(422, f"item {ev.item_id!r} was not recommended in request {ev.request_id}")
        event_id = ev.event_id or uuid.uuid4().hex
        is_new = stored(
            feedback_log,
            {
                schema.EVENT_ID: event_id,
                schema.USER: ev.user_id,
                schema.ITEM: ev.item_id,
                schema.KIND: ev.kind,
                schema.TEXT: ev.text,
                schema.MODEL_VERSION: served.model_version,
                schema.ARM: served.arm,
                schema.REQUEST_ID: ev.request_id,
                schema.TIMESTAMP: datetime.now(UTC).isoformat(),
            },
        )
        if is_new:
            shared.sync()  # the next /recommend of this user already reflects it
            trigger.add()
        return FeedbackResponse(
            event_id=event_id, stored=is_new, duplicate=not is_new, arm=served.arm, model_version=served.model_version
        )

    app.state.slots, app.state.feedback_log, app.state.shared = slots, feedback_log, shared
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker process of `instructrec serve` with serve.workers > 1 (uvicorn factory)."""
    import json
    import os

    from instructrec.config import load_config

    spec = json.loads(os.environ[SERVE_ENV])
    cfg = load_config(spec["profile"], overrides=spec["overrides"])
    registry.connect(cfg.paths.tracking_uri)
    return create_app(cfg)
