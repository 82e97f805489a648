"""DELETE /users/{user_id}: erasure, for the admin token only."""

import logging
from dataclasses import asdict

from fastapi import APIRouter, Depends, Security

from instructrec.online.erasure import erase_user
from service.deps import Cfg, Shared
from service.routes import errors
from service.schemas import ErasureResponse
from service.security import TOKEN_ERRORS, bearer, require_admin

log = logging.getLogger("instructrec.service")


def forget(user_id: str, cfg: Cfg, shared: Shared) -> ErasureResponse:
    """Erase a user's feedback and impressions (admin token only): gone from serving and from every later
    training run; the erasure itself is kept in the audit log."""
    erasure = erase_user(cfg.paths.feedback, user_id, requested_by="api")
    shared.sync()
    log.info("erased user %s: %s", erasure.user_sha256[:12], erasure)
    return ErasureResponse(**asdict(erasure))


def router() -> APIRouter:
    r = APIRouter(dependencies=[Security(bearer)])
    r.add_api_route(
        "/users/{user_id}",
        forget,
        methods=["DELETE"],
        dependencies=[Depends(require_admin)],
        responses=errors(
            TOKEN_ERRORS,
            {403: "erasure is off (no admin token configured) or X-Admin-Token is missing or wrong"},
            {422: "validation error (FastAPI's check of the path and the header)"},
        ),
    )
    return r
