"""Column names, dtypes and vocabularies of the canonical tables, named once."""

from __future__ import annotations

import polars as pl

USER = "user_id"
ITEM = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
TITLE = "title"
TEXT = "text"
GENRES = "genres"  # optional attribute column: list[str] (genres, categories)
YEAR = "year"  # optional attribute column
ROW = (
    "_row"  # 1-based row number in the source file: names bad rows, and orders same-second events (split.chronological)
)

EVENT_ID = "event_id"
KIND = "kind"
MODEL_VERSION = "model_version"
ARM = "arm"
REQUEST_ID = "request_id"

UTC_DATETIME = pl.Datetime("us", "UTC")

INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    USER: pl.String(),
    ITEM: pl.String(),
    TIMESTAMP: UTC_DATETIME,
    RATING: pl.Float32(),
}
ITEMS_SCHEMA: dict[str, pl.DataType] = {ITEM: pl.String(), TITLE: pl.String(), TEXT: pl.String()}
ITEM_ATTRIBUTES: dict[str, pl.DataType] = {GENRES: pl.List(pl.String()), YEAR: pl.Int32()}

FEEDBACK_KINDS = ("like", "dislike", "more_like_this", "less_like_this", "instruction")
POSITIVE_KINDS = ("like", "more_like_this")
NEGATIVE_KINDS = ("dislike", "less_like_this")

FEEDBACK_SCHEMA: dict[str, pl.DataType] = {
    EVENT_ID: pl.String(),
    USER: pl.String(),
    ITEM: pl.String(),
    KIND: pl.String(),
    TEXT: pl.String(),
    MODEL_VERSION: pl.String(),
    ARM: pl.String(),
    REQUEST_ID: pl.String(),
    TIMESTAMP: UTC_DATETIME,
}

RATING_RANGE = (0.0, 5.0)
