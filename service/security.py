"""Who may call the service and how much they may send.

The bearer token (when $serve.api_token_env is set) and the body-size bound are checked in one middleware, before
routing and before the body is read: so they also guard /docs, /openapi.json and unknown paths, and a refused body
is never buffered. `bearer` only declares the scheme in the OpenAPI schema (routers that need the token list it);
the middleware enforces it. Erasure needs a second, admin token (`require_admin`).
"""

import secrets
from typing import Annotated

from fastapi import Header, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response
from starlette.types import ASGIApp

from instructrec.config import ServeConfig

OPEN_PATHS = frozenset({"/health"})  # load balancers and probes ask it without a token
BODY_METHODS = ("POST", "PUT", "PATCH")

bearer = HTTPBearer(
    scheme_name="bearer",
    description="The API token: required on every route but /health when the service's $INSTRUCTREC_API_TOKEN "
    "(serve.api_token_env) is set.",
    auto_error=False,  # the middleware answers a missing or wrong token: this only documents the scheme
)

# the errors the middleware answers, as each route declares them in its `responses=`
TOKEN_ERRORS = {401: "missing or wrong API token (the Authorization: Bearer header)"}
BODY_ERRORS = {
    411: "the request body has no Content-Length",
    413: "the request body is over serve.max_body_bytes",
}


class Guard(BaseHTTPMiddleware):
    """Answers 401 for a missing or wrong token, then 411/413 for a body without a length or over the limit."""

    def __init__(self, app: ASGIApp, serve: ServeConfig, token: str | None):
        super().__init__(app)
        self.serve, self.token = serve, token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        for check in (self.unauthorized, self.oversized):
            if (refusal := check(request)) is not None:
                return refusal
        return await call_next(request)

    def unauthorized(self, request: Request) -> Response | None:
        if self.token is None or request.url.path in OPEN_PATHS:
            return None
        given = request.headers.get("authorization", "")
        if secrets.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return None
        detail = (
            f"missing or wrong API token: send 'Authorization: Bearer <token>' "
            f"(the service's token is in ${self.serve.api_token_env})"
        )
        return JSONResponse({"detail": detail}, 401)

    def oversized(self, request: Request) -> Response | None:
        if request.method not in BODY_METHODS:
            return None
        length = request.headers.get("content-length")
        if length is None:
            return JSONResponse({"detail": "a request body needs a Content-Length"}, 411)
        if int(length) > self.serve.max_body_bytes:
            detail = (
                f"request body of {length} bytes is over the limit of "
                f"{self.serve.max_body_bytes} (serve.max_body_bytes)"
            )
            return JSONResponse({"detail": detail}, 413)
        return None


async def require_admin(request: Request, x_admin_token: Annotated[str | None, Header()] = None) -> None:
    """Erasure needs the admin token ($serve.admin_token_env, read when the app was built); without one configured,
    erasure over HTTP is off. Both refusals are 403: the caller is known (bearer token) but not allowed."""
    env = request.app.state.cfg.serve.admin_token_env
    admin_token: str | None = request.app.state.admin_token
    if admin_token is None:
        raise HTTPException(403, f"erasure over HTTP is off: set ${env} for the service")
    if not secrets.compare_digest((x_admin_token or "").encode(), admin_token.encode()):
        raise HTTPException(403, f"erasure needs the admin token (${env}) in X-Admin-Token")
