"""POST /feedback: a user's reaction to a list they were served, stored durably once (a retried event_id is a
duplicate, not a second event); every trigger_events new events start fine-tuning."""

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Security

from instructrec.data import schema
from service.deps import FeedbackLog, Shared, Trigger, stored
from service.routes import bind, errors
from service.schemas import FeedbackRequest, FeedbackResponse, RequestModels
from service.security import BODY_ERRORS, TOKEN_ERRORS, bearer
from service.state import Served, SharedState


def feedback(ev: FeedbackRequest, shared: Shared, feedback_log: FeedbackLog, trigger: Trigger) -> FeedbackResponse:
    served = served_for(shared, ev)
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


def served_for(shared: SharedState, ev: FeedbackRequest) -> Served:
    """The served list the event answers: feedback about a list nobody was served, or someone else's, or an item
    not in it, would teach the model something that never happened."""
    served = shared.served(ev.request_id)
    if served is None:
        raise HTTPException(404, f"unknown request_id {ev.request_id!r}: feedback must answer a served /recommend")
    if served.user_id != ev.user_id:
        raise HTTPException(422, f"request {ev.request_id} was served to user {served.user_id!r}, not {ev.user_id!r}")
    if ev.item_id is not None and ev.item_id not in served.items:
        raise HTTPException(422, f"item {ev.item_id!r} was not recommended in request {ev.request_id}")
    return served


def router(models: RequestModels) -> APIRouter:
    r = APIRouter(dependencies=[Security(bearer)])
    r.add_api_route(
        "/feedback",
        bind(feedback, ev=models.feedback),
        methods=["POST"],
        responses=errors(
            TOKEN_ERRORS,
            BODY_ERRORS,
            {404: "request_id names no served /recommend"},
            {422: "the body fails validation, or names another user or an item that was not in the list"},
            {503: "the event could not be stored on disk (nothing kept: retry with the same event_id)"},
        ),
    )
    return r
