"""A seeded population of users that plays against the running service.

The world: every user's interactions are cut in time into a *past* (what the
pipeline trains on and the service knows) and a *future* the model never saw.
The future alternates into two halves: users react to recommendations from
the first (the reaction half) and the second is kept for offline evaluation
(the evaluation half), so fine-tuning on reactions is never scored on the
very items it was told about.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np
import polars as pl

from instructrec.data import schema
from instructrec.data.split import chronological
from instructrec.evaluation.metrics import ndcg_of_list


@dataclass(frozen=True)
class Future:
    liked: frozenset[str]  # reaction half, rated >= like_min
    disliked: frozenset[str]  # reaction half, rated <= dislike_max
    evaluation: frozenset[str]  # evaluation half, rated >= like_min (offline NDCG relevance)
    genres: tuple[str, ...]  # the future's most frequent genres, most frequent first


def split_world(
    interactions: pl.DataFrame,
    genres: dict[str, tuple[str, ...]],
    future_share: float = 0.3,
    min_past: int = 10,
    like_min: float = 4.0,
    dislike_max: float = 2.0,
) -> tuple[pl.DataFrame, dict[str, Future]]:
    """(past interactions, user -> Future); users too short to cut keep everything in the past."""
    ranked = chronological(interactions).with_columns(
        pl.int_range(pl.len()).over(schema.USER).alias("_pos"), pl.len().over(schema.USER).alias("_n")
    )
    cut = pl.max_horizontal(pl.lit(min_past), (pl.col("_n") * (1.0 - future_share)).ceil().cast(pl.Int64))
    is_future = pl.col("_pos") >= cut
    past = ranked.filter(~is_future).drop("_pos", "_n")
    futures: dict[str, Future] = {}
    for user, frame in ranked.filter(is_future).group_by(schema.USER, maintain_order=True):
        items, ratings = frame[schema.ITEM].to_list(), frame[schema.RATING].to_list()
        react, held = (list(zip(items[i::2], ratings[i::2], strict=True)) for i in (0, 1))
        liked = [i for i, r in react if r is not None and r >= like_min]
        counts = Counter(g for i, r in react + held if r is not None and r >= like_min for g in genres.get(i, ()))
        futures[str(user[0])] = Future(
            frozenset(liked),
            frozenset(i for i, r in react if r is not None and r <= dislike_max),
            frozenset(i for i, r in held if r is not None and r >= like_min),
            tuple(g for g, _ in counts.most_common(2)),
        )
    return past, futures


@dataclass(frozen=True)
class Policy:
    """How a simulated user reacts to a list of recommendations."""

    like: float = 0.9  # shown item in the reaction half, rated high
    more_like_this: float = 0.25  # ... and also asks for more like it
    dislike: float = 0.8  # shown item in the reaction half, rated low
    off_taste_dislike: float = 0.02  # any other shown item outside the future's genres
    request: float = 0.3  # after the first list, asks in words for their future genres
    k: int = 10


REQUEST_TEMPLATES = ("More {genres} please.", "I'd like something {genres} now.", "Show me {genres} films.")


def request_text(genres: tuple[str, ...], rng: np.random.Generator) -> str:
    words = " and ".join(g.lower() for g in genres) or "popular"
    return REQUEST_TEMPLATES[int(rng.integers(len(REQUEST_TEMPLATES)))].format(genres=words)


@dataclass
class RoundStats:
    requests: Counter = field(default_factory=Counter)  # per arm
    impressions: Counter = field(default_factory=Counter)
    likes: Counter = field(default_factory=Counter)
    events: int = 0
    failures: int = 0

    def like_rate(self, arm: str | None = None) -> float:
        shown = self.impressions[arm] if arm else sum(self.impressions.values())
        liked = self.likes[arm] if arm else sum(self.likes.values())
        return liked / shown if shown else float("nan")

    def merge(self, other: RoundStats) -> None:
        for name in ("requests", "impressions", "likes"):
            getattr(self, name).update(getattr(other, name))
        self.events += other.events
        self.failures += other.failures


def _react(
    client: httpx.Client,
    user: str,
    listing: dict,
    future: Future,
    genre_of: dict[str, tuple[str, ...]],
    policy: Policy,
    rng: np.random.Generator,
    stats: RoundStats,
) -> None:
    arm = listing["arm"]
    stats.requests[arm] += 1
    stats.impressions[arm] += len(listing["items"])
    for row in listing["items"]:
        item, kinds = row["item_id"], []
        if item in future.liked and rng.random() < policy.like:
            kinds.append("like")
            if rng.random() < policy.more_like_this:
                kinds.append("more_like_this")
        elif item in future.disliked and rng.random() < policy.dislike:
            kinds.append("dislike")
        elif (
            future.genres
            and not set(genre_of.get(item, ())) & set(future.genres)
            and rng.random() < policy.off_taste_dislike
        ):
            kinds.append("dislike")
        stats.likes[arm] += "like" in kinds
        for kind in kinds:
            _send(client, {"request_id": listing["request_id"], "user_id": user, "kind": kind, "item_id": item}, stats)


def _send(client: httpx.Client, event: dict, stats: RoundStats) -> None:
    event["event_id"] = uuid.uuid4().hex
    response = client.post("/feedback", json=event)
    if response.status_code == 200:
        stats.events += 1
    else:
        stats.failures += 1


def play_user(
    client: httpx.Client,
    user: str,
    future: Future,
    genre_of: dict[str, tuple[str, ...]],
    policy: Policy,
    rng: np.random.Generator,
) -> RoundStats:
    """One session: a list from the history alone, reactions, and sometimes a request in words."""
    stats = RoundStats()
    response = client.post("/recommend", json={"user_id": user, "k": policy.k})
    if response.status_code != 200:
        stats.failures += 1
        return stats
    first = response.json()
    _react(client, user, first, future, genre_of, policy, rng, stats)
    if future.genres and rng.random() < policy.request:
        text = request_text(future.genres, rng)
        _send(client, {"request_id": first["request_id"], "user_id": user, "kind": "instruction", "text": text}, stats)
        response = client.post("/recommend", json={"user_id": user, "k": policy.k, "instruction": text})
        if response.status_code != 200:
            stats.failures += 1
            return stats
        _react(client, user, response.json(), future, genre_of, policy, rng, stats)
    return stats


def _each_user(base_url: str, users: list[str], seed: int, concurrency: int, play) -> list:
    """play(client, user, rng) for every user, `concurrency` at a time; each user's dice depend only on (seed, user)."""

    def one(user: str):
        rng = np.random.default_rng([seed, int(hashlib.sha256(user.encode()).hexdigest()[:12], 16)])
        with httpx.Client(base_url=base_url, timeout=60.0) as client:
            return play(client, user, rng)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, users))


def play_round(
    base_url: str,
    futures: dict[str, Future],
    users: list[str],
    genre_of: dict[str, tuple[str, ...]],
    policy: Policy,
    seed: int,
    concurrency: int = 8,
) -> RoundStats:
    """Every user once (see play_user)."""
    total = RoundStats()
    for stats in _each_user(
        base_url, users, seed, concurrency, lambda c, u, rng: play_user(c, u, futures[u], genre_of, policy, rng)
    ):
        total.merge(stats)
    return total


@dataclass
class SessionStats:
    """Per session arm ("adapted" / "static"): impressions and likes by page, and next-list latencies."""

    impressions: Counter = field(default_factory=Counter)  # (arm, page) -> items shown
    likes: Counter = field(default_factory=Counter)
    users: Counter = field(default_factory=Counter)  # arm -> users
    next_list_ms: list[float] = field(default_factory=list)  # /recommend right after a reaction was stored
    failures: int = 0
    per_user: dict[str, tuple[str, list[int], list[int]]] = field(default_factory=dict)  # user -> (arm, shown and
    # liked per page): users are the randomised unit, so the comparison between arms is made over them

    def merge(self, other: SessionStats) -> None:
        for name in ("impressions", "likes", "users"):
            getattr(self, name).update(getattr(other, name))
        self.next_list_ms += other.next_list_ms
        self.failures += other.failures
        self.per_user.update(other.per_user)

    def user_sums(self, arm: str, pages) -> tuple[np.ndarray, np.ndarray]:
        """(likes, impressions) per user of the arm over the given pages (0-based)."""
        rows = [
            (sum(liked[p] for p in pages if p < len(liked)), sum(shown[p] for p in pages if p < len(shown)))
            for a, shown, liked in self.per_user.values()
            if a == arm
        ]
        likes, shown = zip(*rows, strict=True) if rows else ((), ())
        return np.asarray(likes, dtype=float), np.asarray(shown, dtype=float)

    def counts(self, arm: str, pages) -> tuple[int, int]:
        """(likes, impressions) of the arm on the given pages (0-based)."""
        return sum(self.likes[(arm, p)] for p in pages), sum(self.impressions[(arm, p)] for p in pages)


def play_session(
    client: httpx.Client,
    user: str,
    future: Future,
    genre_of: dict[str, tuple[str, ...]],
    policy: Policy,
    rng: np.random.Generator,
    pages: int,
) -> SessionStats:
    """One user asks for `pages` lists in a row, reacting to each before asking again.

    After the first list the user may say what they want in words once (in that request, as in
    `play_user`); whether later lists still honour it, and what the reactions change, is the
    service's session adaptation, which is what the arms differ in.
    """
    stats = SessionStats()
    text = None
    for page in range(pages):
        body = {"user_id": user, "k": policy.k}
        if page == 1 and text:
            body["instruction"] = text
        t0 = time.perf_counter()
        response = client.post("/recommend", json=body)
        elapsed = (time.perf_counter() - t0) * 1000.0
        if response.status_code != 200:
            stats.failures += 1
            return stats
        listing = response.json()
        arm = "adapted" if listing["session_adapted"] else "static"
        if page == 0:
            stats.users[arm] += 1
            stats.per_user[user] = (arm, [], [])
        else:
            stats.next_list_ms.append(elapsed)
        round_stats = RoundStats()
        _react(client, user, listing, future, genre_of, policy, rng, round_stats)
        stats.impressions[(arm, page)] += len(listing["items"])
        stats.likes[(arm, page)] += round_stats.likes[listing["arm"]]
        stats.per_user[user][1].append(len(listing["items"]))
        stats.per_user[user][2].append(round_stats.likes[listing["arm"]])
        stats.failures += round_stats.failures
        if page == 0 and future.genres and rng.random() < policy.request:
            text = request_text(future.genres, rng)
            _send(
                client,
                {"request_id": listing["request_id"], "user_id": user, "kind": "instruction", "text": text},
                round_stats,
            )
    return stats


def play_sessions(
    base_url: str,
    futures: dict[str, Future],
    users: list[str],
    genre_of: dict[str, tuple[str, ...]],
    policy: Policy,
    seed: int,
    pages: int,
    concurrency: int = 10,
) -> SessionStats:
    """Every user plays one session of `pages` lists (see play_session)."""
    total = SessionStats()
    for stats in _each_user(
        base_url,
        users,
        seed,
        concurrency,
        lambda c, u, rng: play_session(c, u, futures[u], genre_of, policy, rng, pages),
    ):
        total.merge(stats)
    return total


def future_ndcg(top_k: dict[str, list[str]], futures: dict[str, Future], k: int = 10) -> float:
    """Mean NDCG@k of each user's list against their evaluation half (users without one are skipped)."""
    values = [ndcg_of_list(top_k[u], set(futures[u].evaluation), k) for u in top_k if futures[u].evaluation]
    return float(np.mean(values)) if values else float("nan")
