"""The service's routes, one module per concern; each module's `router(...)` builds its APIRouter for one app.

Routers are built per app (not module-level) because two routes take a request type that carries the config's
limits (service.schemas.request_models): `bind` hands FastAPI the endpoint with those per-app types in its
signature, which is where FastAPI reads both validation and the OpenAPI schema from.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, get_type_hints

from service.schemas import Problem, ValidationProblem

P = ParamSpec("P")
R = TypeVar("R")


def bind(endpoint: Callable[P, R], **annotations: Any) -> Callable[P, R]:
    """The endpoint, its named parameters re-typed (e.g. `req=` the per-config RecommendRequest subclass); every
    other parameter keeps its own annotation, resolved here so FastAPI need not look names up in this module."""
    hints = get_type_hints(endpoint, include_extras=True)
    signature = inspect.signature(endpoint)
    parameters = [
        p.replace(annotation=annotations.get(p.name, hints.get(p.name, p.annotation)))
        for p in signature.parameters.values()
    ]

    @functools.wraps(endpoint)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return endpoint(*args, **kwargs)

    vars(call)["__signature__"] = signature.replace(
        parameters=parameters, return_annotation=hints.get("return", signature.return_annotation)
    )
    return call


def errors(*described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each error status it really answers, a one-line description, and its body."""
    merged = {status: text for d in described for status, text in d.items()}
    return {
        status: {"description": text, "model": ValidationProblem if status == 422 else Problem}
        for status, text in sorted(merged.items())
    }
