"""Prefect events that link the deployments in prefect.yaml: the service's feedback threshold starts
fine-tuning, a new champion starts batch inference. Emitted only where a Prefect server listens."""

from __future__ import annotations

import logging

from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

FINETUNE_EVENT = "instructrec.feedback.threshold"
FEEDBACK_RESOURCE = "instructrec.feedback-store"
CHAMPION_EVENT = "instructrec.champion.promoted"
MODEL_RESOURCE = "instructrec.model.instructrec-scorer"

log = logging.getLogger("instructrec.events")


def emit(event: str, resource: str, payload: dict) -> bool:
    """True when sent; False without a server (the ephemeral API of `make run` has no automations to run)."""
    if not PREFECT_API_URL.value():
        log.info("%s %s: no PREFECT_API_URL, so no event emitted", event, payload)
        return False
    emit_event(event=event, resource={"prefect.resource.id": resource}, payload=payload)
    log.info("emitted %s %s", event, payload)
    return True


def feedback_threshold(new_events: int, profile: str) -> bool:
    return emit(FINETUNE_EVENT, FEEDBACK_RESOURCE, {"new_events": new_events, "profile": profile})


def champion_promoted(version: str, previous: str | None, profile: str) -> bool:
    return emit(CHAMPION_EVENT, MODEL_RESOURCE, {"version": version, "previous": previous, "profile": profile})
