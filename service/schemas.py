"""The service's request and response bodies.

The request models are static classes with every limit that does not depend on the config. The limits that do
(serve.max_k, serve.max_text_chars, serve.max_user_id_chars) are added by `request_models(serve)`: a subclass per
app whose fields carry them as ordinary constraints, so pydantic refuses an over-long value with a 422 like any
other, and the app's OpenAPI schema shows the limits of the config it was built from.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator

from instructrec.config import ServeConfig
from instructrec.data import schema

ITEM_KINDS = tuple(k for k in schema.FEEDBACK_KINDS if k != "instruction")
Kind = Literal["like", "dislike", "more_like_this", "less_like_this", "instruction"]  # spelled out: a static type
if get_args(Kind) != schema.FEEDBACK_KINDS:  # the feedback suite checks the library's set: the service takes the same
    raise ImportError(f"service.schemas.Kind {get_args(Kind)} differs from schema.FEEDBACK_KINDS")
RequestSource = Literal["request", "session", "none", "more_like_this"]  # where the served list's words came from

UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]  # + serve.max_user_id_chars
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]  # + serve.max_text_chars
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
ShortId = Annotated[str, StringConstraints(min_length=1, max_length=64)]

INSTRUCTION = "the user's own words, e.g. 'a funny animated film'"


# ---------------------------------------------------------------------------------------------------- requests


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: UserId
    instruction: Text | None = Field(None, description=INSTRUCTION)
    k: int = Field(10, ge=1)  # + serve.max_k
    like_item_id: ItemId | None = Field(None, description="more like this item: its nearest items, unseen ones")
    diversity: float | None = Field(None, ge=0.0, le=1.0, description="MMR re-ranking weight (default serve.diversity)")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: ShortId
    user_id: UserId
    kind: Kind
    item_id: ItemId | None = None
    text: Text | None = None
    event_id: ShortId | None = Field(
        None, description="client-chosen id: a retried event with the same id is stored once"
    )

    @model_validator(mode="after")
    def _kind_needs(self):
        if self.kind in ITEM_KINDS and self.item_id is None:
            raise ValueError(f"kind {self.kind!r} needs item_id (the recommended item it is about)")
        if self.kind == "instruction" and self.text is None:
            raise ValueError("kind 'instruction' needs text (the user's request)")
        return self


@dataclass(frozen=True)
class RequestModels:
    """One app's request types, the config's limits included (see the module's docstring)."""

    recommend: type[RecommendRequest]
    feedback: type[FeedbackRequest]
    k: Any  # the `k` query parameter of /items/{item_id}/similar: an Annotated int with its bounds


def _string(max_length: int, nullable: bool = False) -> Any:
    """A stripped, non-empty string of at most max_length characters (or null). Typed Any: the bound is a runtime
    value, so the result is a value handed to pydantic, not a type the checker could read."""
    bounded: Any = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=max_length)]
    return bounded | None if nullable else bounded


def request_models(serve: ServeConfig) -> RequestModels:
    """The request models with this config's limits: subclasses that only tighten the config-dependent fields (same
    names, same field order, so the OpenAPI schema reads as if the limits were written in the classes)."""
    user_id, text = _string(serve.max_user_id_chars), _string(serve.max_text_chars, nullable=True)
    recommend = create_model(
        "RecommendRequest",
        __base__=RecommendRequest,
        __module__=__name__,
        user_id=(user_id, ...),
        instruction=(text, Field(None, description=INSTRUCTION)),
        k=(int, Field(10, ge=1, le=serve.max_k)),
    )
    feedback = create_model(
        "FeedbackRequest", __base__=FeedbackRequest, __module__=__name__, user_id=(user_id, ...), text=(text, None)
    )
    return RequestModels(recommend, feedback, Annotated[int, Query(ge=1, le=serve.max_k)])


# ---------------------------------------------------------------------------------------------------- responses


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
    batch_requests: int = Field(description="most requests one scoring call serves (1: each request alone)")
    batched_calls: int = Field(description="shared scoring calls made so far (0 when requests score alone)")
    mean_batch: float | None = Field(description="requests per shared scoring call so far (null: none yet)")


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


# ---------------------------------------------------------------------------------------------------- errors


class Problem(BaseModel):
    detail: str = Field(description="what was wrong, and what to do about it")


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict | None = None


class ValidationProblem(BaseModel):
    detail: list[FieldProblem] | str = Field(
        description="the fields that failed validation, or (a well-formed body that contradicts what was served) "
        "the reason in words"
    )
