"""What routes share, reached from `app.state` (set once by create_app) through dependencies rather than
closures, plus the two helpers every storing or model-reading route needs.

The dependencies are `async def` on purpose: FastAPI runs a sync dependency in the thread pool, and these only
read an attribute.
"""

import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from instructrec.abtest import CHAMPION_ARM
from instructrec.config import Config
from instructrec.eventlog import EventLog, StoreWriteError
from instructrec.recommend import Recommender
from service.state import FinetuneTrigger, ModelSlots, SharedState

log = logging.getLogger("instructrec.service")


async def config(request: Request) -> Config:
    return request.app.state.cfg


async def model_slots(request: Request) -> ModelSlots:
    return request.app.state.slots


async def shared_state(request: Request) -> SharedState:
    return request.app.state.shared


async def feedback_log(request: Request) -> EventLog:
    return request.app.state.feedback_log


async def impression_log(request: Request) -> EventLog:
    return request.app.state.impression_log


async def finetune_trigger(request: Request) -> FinetuneTrigger:
    return request.app.state.trigger


Cfg = Annotated[Config, Depends(config)]
Slots = Annotated[ModelSlots, Depends(model_slots)]
Shared = Annotated[SharedState, Depends(shared_state)]
FeedbackLog = Annotated[EventLog, Depends(feedback_log)]
ImpressionLog = Annotated[EventLog, Depends(impression_log)]
Trigger = Annotated[FinetuneTrigger, Depends(finetune_trigger)]


def champion_or_503(slots: ModelSlots) -> dict[str, Recommender]:
    """The models serving now. Called in the route (not a dependency) so a malformed request still gets its 422."""
    current = slots.current()
    if CHAMPION_ARM not in current:
        raise HTTPException(503, "no champion model is registered yet; run the training pipeline first")
    return current


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
