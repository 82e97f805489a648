"""POST /recommend and GET /items/{item_id}/similar: the served lists. Every /recommend list (and every failed
one) is in the impression log before the answer leaves, so /feedback can check what it answers."""

import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Security

from instructrec.config import Config
from instructrec.data import schema
from instructrec.online.abtest import CHALLENGER_ARM, CHAMPION_ARM, assign_arm, experiment_id
from instructrec.serving.recommend import Adaptation, Recommender
from service.deps import Cfg, ImpressionLog, Shared, Slots, champion_or_503, stored
from service.routes import bind, errors
from service.schemas import RecommendRequest, RecommendResponse, RequestModels, RequestSource, SimilarResponse
from service.security import BODY_ERRORS, TOKEN_ERRORS, bearer
from service.state import Served, SharedState, adapts

UNKNOWN_ITEM = {404: "the item is not in the serving model's catalogue"}
NO_VECTOR = {409: "the serving model was exported without item vectors: no similar items from it"}


def recommend(
    req: RecommendRequest, cfg: Cfg, slots: Slots, shared: Shared, impressions: ImpressionLog
) -> RecommendResponse:
    began = time.perf_counter()
    current = champion_or_503(slots)
    arm = arm_of(cfg, req.user_id, current)
    rec = current[arm]
    try:
        out, instruction, source, adapted = answer(cfg, shared, req, rec)
    except HTTPException:  # the client's mistake (an unknown item, ...): not the model's error
        raise
    except Exception:
        failed = served_record(uuid.uuid4().hex, req.user_id, arm, rec, [], None, False, began, True)
        stored(impressions, failed)
        raise
    request_id = uuid.uuid4().hex
    items = [row["item_id"] for row in out["items"]]
    stored(impressions, served_record(request_id, req.user_id, arm, rec, items, instruction, adapted, began))
    shared.remember(request_id, Served(req.user_id, arm, rec.version, frozenset(items)))
    return RecommendResponse(request_id=request_id, arm=arm, request_source=source, session_adapted=adapted, **out)


def similar(item_id: str, slots: Slots, k: Annotated[int, Query(ge=1)] = 10) -> SimilarResponse:
    return SimilarResponse(**nearest(champion_or_503(slots)[CHAMPION_ARM], item_id, k))


def arm_of(cfg: Config, user_id: str, current: dict[str, Recommender]) -> str:
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


def answer(
    cfg: Config, shared: SharedState, req: RecommendRequest, rec: Recommender
) -> tuple[dict, str | None, RequestSource, bool]:
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


def router(models: RequestModels) -> APIRouter:
    """The routes, their request types carrying this app's limits (serve.max_k, max_text_chars, max_user_id_chars)."""
    r = APIRouter(dependencies=[Security(bearer)])
    r.add_api_route(
        "/recommend",
        bind(recommend, req=models.recommend),
        methods=["POST"],
        responses=errors(
            TOKEN_ERRORS,
            BODY_ERRORS,
            {404: "like_item_id is not in the serving model's catalogue"},
            NO_VECTOR,
            {422: "the body fails validation (unknown field, k or a text out of bounds, ...)"},
            {503: "no champion model is registered yet, or the served list could not be stored on disk"},
        ),
    )
    r.add_api_route(
        "/items/{item_id}/similar",
        bind(similar, k=models.k),
        methods=["GET"],
        responses=errors(
            TOKEN_ERRORS,
            UNKNOWN_ITEM,
            NO_VECTOR,
            {422: "k is out of bounds"},
            {503: "no champion model is registered yet"},
        ),
    )
    return r
