"""Temporal leave-one-out split (docs/protocol.md) into index space.

Per user, interactions are ordered by timestamp, ties kept in the source's
row order (`chronological`); the last is the test target, the one before the
validation target, the rest train. Items are indexed 1..N in catalogue order;
0 is padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import polars as pl

from instructrec.data import schema


@dataclass(frozen=True)
class Catalogue:
    item_ids: list[str]  # item index i (1-based) is item_ids[i - 1]
    titles: list[str]
    texts: list[str]
    genres: list[tuple[str, ...]]
    noun: str = "item"
    index: dict[str, int] = field(default_factory=dict)
    years: list[int | None] = field(default_factory=list)  # release years; empty where the data has none

    def __post_init__(self) -> None:
        if not self.index:
            self.index.update({item: i + 1 for i, item in enumerate(self.item_ids)})
        if not self.years:
            self.years.extend([None] * len(self.item_ids))

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def title(self, idx: int) -> str:
        return self.titles[idx - 1]

    def genres_of(self, idx: int) -> tuple[str, ...]:
        return self.genres[idx - 1]

    def year_of(self, idx: int) -> int | None:
        return self.years[idx - 1]

    @cached_property
    def genre_names(self) -> tuple[str, ...]:
        return tuple(sorted({g for gs in self.genres for g in gs if g is not None}))

    @cached_property
    def genre_counts(self) -> np.ndarray:
        """[n_items + 1, genres] how often item i lists each genre of `genre_names` (row 0, the padding: none).
        One byte a cell: 10k items x 20 genres is 200 KB; a catalogue with thousands of distinct tags pays
        items x tags bytes here."""
        column = {g: j for j, g in enumerate(self.genre_names)}
        out = np.zeros((self.n_items + 1, len(column)), dtype=np.uint8)
        pairs = [(i + 1, column[g]) for i, gs in enumerate(self.genres) for g in gs if g is not None]
        if pairs:
            np.add.at(out, tuple(np.asarray(pairs).T), 1)
        return out

    @cached_property
    def newest_year(self) -> int | None:
        """The newest release year: what "recent" and "old" are read against (None without years)."""
        return max((y for y in self.years if y), default=None)

    @classmethod
    def from_items(cls, items: pl.DataFrame, noun: str = "item") -> Catalogue:
        items = items.sort(schema.ITEM)
        genres = (
            [tuple(g or ()) for g in items[schema.GENRES].to_list()]
            if schema.GENRES in items.columns
            else [()] * items.height
        )
        years = items[schema.YEAR].to_list() if schema.YEAR in items.columns else []
        return cls(
            item_ids=items[schema.ITEM].to_list(),
            titles=items[schema.TITLE].to_list(),
            texts=items[schema.TEXT].to_list(),
            genres=genres,
            noun=noun,
            years=years,
        )


@dataclass(frozen=True)
class SplitData:
    catalogue: Catalogue
    users: list[str]
    train: list[np.ndarray]  # per user: item indices in time order
    train_ratings: list[np.ndarray]  # aligned with train; NaN where unrated
    valid: np.ndarray  # per user: validation target index, 0 if none
    test: np.ndarray  # per user: test target index, 0 if none
    popularity: np.ndarray  # [n_items + 1] train interaction counts

    @property
    def eval_users(self) -> np.ndarray:
        return np.flatnonzero((self.test > 0) & (self.valid > 0))

    def history_before_test(self, u: int) -> np.ndarray:
        return np.append(self.train[u], self.valid[u])

    def n_train(self) -> int:
        return int(sum(len(s) for s in self.train))


def sample_users(interactions: pl.DataFrame, max_users: int | None, seed: int) -> pl.DataFrame:
    if max_users is None:
        return interactions
    users = interactions[schema.USER].unique().sort()
    if users.len() <= max_users:
        return interactions
    keep = users.sample(max_users, seed=seed)
    return interactions.filter(pl.col(schema.USER).is_in(keep.implode()))


def chronological(interactions: pl.DataFrame) -> pl.DataFrame:
    """Each user's events in time order, ties in the source's row order (docs/protocol.md).

    The published convention (RecBole; the SASRec and BERT4Rec preprocessing) is a stable sort by
    time: of two events in the same second, the later row of the file is the later event. The
    row-order column carries that order through Parquet and Polars; a frame without it is taken
    to be in source order already.
    """
    keys = [schema.USER, schema.TIMESTAMP] + ([schema.ROW] if schema.ROW in interactions.columns else [])
    return interactions.sort(keys, maintain_order=True)


def temporal_leave_one_out(interactions: pl.DataFrame, catalogue: Catalogue) -> SplitData:
    """Split by time per user; users with fewer than 3 events only train."""
    rating = (
        pl.col(schema.RATING).cast(pl.Float32)
        if schema.RATING in interactions.columns
        else pl.lit(None, dtype=pl.Float32)
    )
    seqs = (
        interactions.with_columns(
            pl.col(schema.ITEM).replace_strict(catalogue.index, return_dtype=pl.Int64).alias("idx"),
            rating.fill_null(float("nan")).alias("r"),
        )
        .pipe(chronological)
        .group_by(schema.USER, maintain_order=True)
        .agg("idx", "r")
    )
    users = seqs[schema.USER].to_list()
    train, ratings = [], []
    valid = np.zeros(len(users), dtype=np.int64)
    test = np.zeros(len(users), dtype=np.int64)
    for u, (items, rs) in enumerate(zip(seqs["idx"].to_list(), seqs["r"].to_list(), strict=True)):
        items, rs = np.asarray(items, dtype=np.int64), np.asarray(rs, dtype=np.float32)
        cut = len(items) - 2 if len(items) >= 3 else len(items)
        train.append(items[:cut])
        ratings.append(rs[:cut])
        if cut < len(items):
            valid[u], test[u] = items[cut], items[cut + 1]
    popularity = np.bincount(np.concatenate(train), minlength=catalogue.n_items + 1).astype(np.float64)
    popularity[0] = 0
    return SplitData(catalogue, users, train, ratings, valid, test, popularity)
