"""What routes share, reached from `app.state` (set once by create_app) through dependencies rather than
closures, plus the two helpers every storing or model-reading route needs.

The dependencies are `async def` on purpose: FastAPI runs a sync dependency in the thread pool, and these only
read an attribute.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from instructrec.config import Config
from instructrec.online.abtest import CHAMPION_ARM
from instructrec.online.eventlog import EventLog, StoreWriteError
from instructrec.serving.recommend import Recommender
from service.state import FinetuneTrigger, ModelSlots, SharedState

log = logging.getLogger("instructrec.service")


def _state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that hands a route one attribute of app.state (set once by service.app._open_state)."""

    async def get(request: Request) -> Any:
        return getattr(request.app.state, name)

    get.__name__ = f"state_{name}"
    return get


Cfg = Annotated[Config, Depends(_state("cfg"))]
Slots = Annotated[ModelSlots, Depends(_state("slots"))]
Shared = Annotated[SharedState, Depends(_state("shared"))]
FeedbackLog = Annotated[EventLog, Depends(_state("feedback_log"))]
ImpressionLog = Annotated[EventLog, Depends(_state("impression_log"))]
Trigger = Annotated[FinetuneTrigger, Depends(_state("trigger"))]


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
