"""A seeded synthetic catalogue and interaction log at any size, shaped like real recommendation data.

What makes it realistic enough to measure cost and to train on:
- item popularity follows a power law (Zipf exponent `popularity_exponent`, as MovieLens' long tail);
- user activity is heavy-tailed (log-normal, `activity_sigma`), every user with at least `min_per_user` events;
- sequences are genre-coherent: each user has a favourite genre; each next item is from it with probability
  `genre_focus` (drawn by popularity within the genre), else from the whole catalogue by popularity;
- timestamps increase per user with exponential gaps, over `span_days`; ratings are higher in the favourite genre;
- items have titles, genres (1 to 3) and a text that names them, as the pipeline's text tower reads.

Generated in blocks of users, each written as its own Parquet row group, so memory stays bounded by the block,
not the log; `write_synthetic(...)` gives a directory `--data DIR` reads like any user data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from instructrec.data import schema
from instructrec.io import atomic_path

GENRES = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Horror",
    "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "Family", "History",
)  # fmt: skip
_ADJECTIVES = (
    "Silent", "Last", "Hidden", "Broken", "Golden", "Midnight", "Lost", "Distant", "Wild", "Secret", "Burning",
    "Frozen", "Quiet", "Endless", "Crimson", "Little", "Electric", "Hollow", "Northern", "Velvet",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Empire", "Garden", "River", "Machine", "Letter", "Kingdom", "Station", "Mirror", "Forest",
    "Promise", "Signal", "Island", "Storm", "Orchard", "Voyage", "Circus", "Archive", "Frontier", "Lantern",
)  # fmt: skip


@dataclass(frozen=True)
class SynthSpec:
    users: int
    items: int
    interactions: int
    seed: int = 7
    popularity_exponent: float = 1.0  # Zipf: the item of popularity rank r is drawn with weight r**-exponent
    activity_sigma: float = 1.0  # log-normal spread of events per user (MovieLens-100k: about 1.0)
    genre_focus: float = 0.7  # share of a user's events in their favourite genre
    min_per_user: int = 5  # every user can be split (train, validation, test) and has a history
    span_days: float = 730.0
    block_users: int = 50_000  # users generated (and held in memory) at a time

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 2:
            raise ValueError("synth needs at least 1 user and 2 items")
        if self.interactions < self.users * self.min_per_user:
            raise ValueError(
                f"{self.interactions:,} interactions cannot give {self.users:,} users {self.min_per_user} each; "
                f"ask for at least {self.users * self.min_per_user:,}"
            )


@dataclass(frozen=True)
class Catalogue:
    items: pl.DataFrame
    genre_of: np.ndarray  # [items] index of each item's first (main) genre
    popularity: np.ndarray  # [items] draw weights, summing to 1


def make_items(spec: SynthSpec, rng: np.random.Generator) -> Catalogue:
    """Items with power-law popularity; the popularity rank is shuffled against the ids (id order means nothing)."""
    n = spec.items
    weights = np.arange(1, n + 1, dtype=np.float64) ** -spec.popularity_exponent
    popularity = rng.permutation(weights / weights.sum())
    genre_share = np.arange(1, len(GENRES) + 1, dtype=np.float64) ** -0.7  # some genres are larger than others
    main = rng.choice(len(GENRES), size=n, p=genre_share / genre_share.sum())
    extra = rng.integers(0, len(GENRES), size=(n, 2))
    n_extra = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])
    genres = [list(dict.fromkeys([GENRES[main[i]], *(GENRES[g] for g in extra[i, : n_extra[i]])])) for i in range(n)]
    adjective, noun = rng.integers(0, len(_ADJECTIVES), size=n), rng.integers(0, len(_NOUNS), size=n)
    years = rng.integers(1950, 2024, size=n)
    titles = [f"The {_ADJECTIVES[a]} {_NOUNS[b]} ({y})" for a, b, y in zip(adjective, noun, years, strict=True)]
    texts = [f"{t}. A {', '.join(g).lower()} story." for t, g in zip(titles, genres, strict=True)]
    items = pl.DataFrame(
        {
            schema.ITEM: [f"i{i}" for i in range(n)],
            schema.TITLE: titles,
            schema.TEXT: texts,
            schema.GENRES: genres,
            schema.YEAR: years.astype(np.int32),
        },
        schema={schema.ITEM: pl.String, schema.TITLE: pl.String, schema.TEXT: pl.String,
                schema.GENRES: pl.List(pl.String), schema.YEAR: pl.Int32},
    )  # fmt: skip
    return Catalogue(items, main, popularity)


def events_per_user(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed counts summing to exactly `interactions`, none below `min_per_user`, none above the catalogue."""
    raw = rng.lognormal(0.0, spec.activity_sigma, size=spec.users)
    spare = spec.interactions - spec.users * spec.min_per_user
    counts = spec.min_per_user + np.floor(raw / raw.sum() * spare).astype(np.int64)
    counts = np.minimum(counts, spec.items)
    short = spec.interactions - int(counts.sum())  # rounding and the cap: handed out one by one, heaviest first
    order = np.argsort(-raw)
    while short > 0:
        room = order[counts[order] < spec.items][:short]
        if not len(room):
            break  # the catalogue cannot hold more distinct items per user
        counts[room] += 1
        short -= len(room)
    return counts


def _draw(rng: np.random.Generator, pool: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    cumulative = np.cumsum(weights)
    return pool[np.searchsorted(cumulative, rng.random(size) * cumulative[-1], side="right").clip(0, len(pool) - 1)]


def _pick(
    rng: np.random.Generator, rows: np.ndarray, genre: np.ndarray, catalogue: Catalogue, by_genre: list[np.ndarray]
) -> np.ndarray:
    """Items for `rows`: a row with a genre (>= 0) draws within it by popularity, the others from everything."""
    items = _draw(rng, np.arange(len(catalogue.popularity)), catalogue.popularity, len(rows))
    for g, pool in enumerate(by_genre):
        mine = np.flatnonzero(genre[rows] == g)
        if len(mine) and len(pool):
            items[mine] = _draw(rng, pool, catalogue.popularity[pool], len(mine))
    return items


def _distinct_per_user(
    rng: np.random.Generator,
    owner: np.ndarray,
    genre: np.ndarray,
    catalogue: Catalogue,
    by_genre: list[np.ndarray],
    rounds: int = 12,
) -> np.ndarray:
    """Each row's item, redrawn while the user already has it: within the row's genre first, then (a heavy user
    who has seen most of a small genre) from the whole catalogue by popularity, then uniformly."""
    n_items = len(catalogue.popularity)
    items = _pick(rng, np.arange(len(owner)), genre, catalogue, by_genre)
    for round_ in range(rounds):
        key = owner.astype(np.int64) * n_items + items
        _, first = np.unique(key, return_index=True)
        repeated = np.ones(len(key), dtype=bool)
        repeated[first] = False
        rows = np.flatnonzero(repeated)
        if not len(rows):
            break
        if round_ < rounds // 3:
            items[rows] = _pick(rng, rows, genre, catalogue, by_genre)
        elif round_ < 2 * rounds // 3:
            items[rows] = _pick(rng, rows, np.full_like(genre, -1), catalogue, by_genre)
        else:  # the popular items are all taken: the tail, uniformly
            items[rows] = rng.integers(0, n_items, len(rows))
    return items


def interaction_blocks(spec: SynthSpec, catalogue: Catalogue, rng: np.random.Generator) -> Iterator[pl.DataFrame]:
    """The log, `block_users` users at a time, each user's events in time order, (user, item) pairs unique."""
    counts = events_per_user(spec, rng)
    by_genre = [np.flatnonzero(catalogue.genre_of == g) for g in range(len(GENRES))]
    genre_weight = np.array([catalogue.popularity[p].sum() for p in by_genre])
    start = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    for first in range(0, spec.users, spec.block_users):
        users = np.arange(first, min(first + spec.block_users, spec.users))
        n = counts[users]
        owner = np.repeat(np.arange(len(users)), n)
        favourite = rng.choice(len(GENRES), size=len(users), p=genre_weight / genre_weight.sum())
        focused = rng.random(len(owner)) < spec.genre_focus
        genre = np.where(focused, favourite[owner], -1)
        items = _distinct_per_user(rng, owner, genre, catalogue, by_genre)
        mean_gap = spec.span_days * 86_400 * 0.5 / np.maximum(n, 1)  # a user's events fill half the span
        gaps = rng.exponential(1.0, size=len(owner)) * mean_gap[owner]
        begin = rng.random(len(users)) * spec.span_days * 86_400 * 0.5
        offset = np.concatenate([[0], np.cumsum(n)[:-1]])
        seconds = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[offset] - gaps[offset], n) + begin[owner]
        liked = catalogue.genre_of[items] == favourite[owner]
        rating = np.where(liked, rng.integers(3, 6, len(owner)), rng.integers(1, 5, len(owner))).astype(np.float32)
        block = pl.DataFrame(
            {
                schema.USER: (users + 1)[owner],
                schema.ITEM: items,
                schema.TIMESTAMP: ((start + seconds) * 1e6).astype(np.int64),
                schema.RATING: rating,
            }
        ).with_columns(
            pl.concat_str(pl.lit("u"), pl.col(schema.USER).cast(pl.String)).alias(schema.USER),
            pl.concat_str(pl.lit("i"), pl.col(schema.ITEM).cast(pl.String)).alias(schema.ITEM),
            pl.col(schema.TIMESTAMP).cast(schema.UTC_DATETIME),
        )
        yield block.unique([schema.USER, schema.ITEM], keep="first", maintain_order=True)  # what redraws left


def write_synthetic(spec: SynthSpec, out: Path) -> dict[str, int]:
    """items.parquet and interactions.parquet in `out` (each written atomically); returns what was written."""
    rng = np.random.default_rng(spec.seed)
    catalogue = make_items(spec, rng)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "items.parquet") as tmp:
        catalogue.items.write_parquet(tmp)
    rows = 0
    with atomic_path(out / "interactions.parquet") as tmp:
        writer = None
        for block in interaction_blocks(spec, catalogue, rng):
            table = block.to_arrow()
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows += block.height
        assert writer is not None
        writer.close()
    return {"users": spec.users, "items": spec.items, "interactions": rows}
