"""Feedback events and their turn into fine-tuning examples.

Two streams: (1) ratings from the *training* part of the split become likes
(rating >= like_min) and dislikes (rating <= dislike_max), never touching the
validation or test targets; (2) events in the append-only feedback store
(like / dislike / more_like_this / less_like_this / instruction). A replay
sample of the base examples guards against forgetting.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from instructrec.config import Config
from instructrec.data import schema
from instructrec.data.split import SplitData
from instructrec.io import write_parquet
from instructrec.language.instructions import (
    ExampleBuilder,
    Examples,
    free_text_instruction,
    make_instruction,
    sampled_instruction,
    windows,
)
from instructrec.online.abtest import ArmUsers
from instructrec.online.eventlog import iter_records

FEEDBACK_LOG = "events"  # JSON-lines segments written by the service, one per process
IMPRESSION_LOG = "impressions"  # every served list: request, user, arm, model version, items, instruction
STORE_GLOB = f"{FEEDBACK_LOG}-*.parquet"  # batch files (imports, tests)
IMPRESSIONS_SCHEMA: dict[str, pl.DataType] = {
    schema.REQUEST_ID: pl.String(),
    schema.USER: pl.String(),
    schema.ARM: pl.String(),
    schema.MODEL_VERSION: pl.String(),
    "items": pl.List(pl.String()),
    "instruction": pl.String(),
    "latency_ms": pl.Float64(),  # time the service spent on the request (absent in logs from before it was kept)
    "error": pl.Boolean(),  # the request failed after its arm was chosen (no items were shown)
    schema.TIMESTAMP: schema.UTC_DATETIME,
}
KIND_LABEL = {"like": (1.0, 1.0), "more_like_this": (1.0, 2.0), "dislike": (-1.0, 1.0), "less_like_this": (-1.0, 2.0)}
FEEDBACK_MIX = {"P1/I0": 0.5, "P1/I2": 0.3, "P2/I2": 0.1, "P0/I2": 0.1}


@dataclass(frozen=True)
class FeedbackStats:
    from_ratings_like: int
    from_ratings_dislike: int
    from_store: int
    store_skipped: int  # unknown user or item, or an instruction with no item
    replay: int

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}


def read_store(feedback_dir: Path) -> pl.DataFrame:
    """All stored events: Parquet batch files and the service's JSON-lines segments (none is ever rewritten)."""
    frames = [pl.read_parquet(f) for f in sorted(feedback_dir.glob(STORE_GLOB))]
    records = list(iter_records(feedback_dir, FEEDBACK_LOG))
    if records:
        frames.append(_frame(records, schema.FEEDBACK_SCHEMA))
    if not frames:
        return pl.DataFrame(schema=schema.FEEDBACK_SCHEMA)
    return pl.concat(frames, how="diagonal_relaxed")


def read_impressions(feedback_dir: Path) -> pl.DataFrame:
    records = list(iter_records(feedback_dir, IMPRESSION_LOG))
    return _frame(records, IMPRESSIONS_SCHEMA) if records else pl.DataFrame(schema=IMPRESSIONS_SCHEMA)


def _frame(records: list[dict], columns: dict[str, pl.DataType]) -> pl.DataFrame:
    raw = {c: [r.get(c) for r in records] for c in columns}
    ts = raw.pop(schema.TIMESTAMP)
    df = pl.DataFrame(raw, schema={c: t for c, t in columns.items() if c != schema.TIMESTAMP})
    stamps = pl.Series(schema.TIMESTAMP, ts, dtype=pl.String).str.to_datetime(time_zone="UTC", time_unit="us")
    return df.with_columns(stamps).select(list(columns))


def online_users(impressions: pl.DataFrame, store: pl.DataFrame, arms: dict[str, str]) -> dict[str, ArmUsers]:
    """Per user of each arm (the arm's model version only): items shown, liked and disliked shown items, requests,
    failed requests; and the arm's per-request latencies. Users are the unit the test randomises and analyses."""
    judged = (
        store.filter(
            pl.col(schema.ITEM).is_not_null()
            & pl.col(schema.KIND).is_in([*schema.POSITIVE_KINDS, *schema.NEGATIVE_KINDS])
        )
        .select(
            schema.REQUEST_ID,
            schema.ITEM,
            pl.col(schema.KIND).is_in(list(schema.POSITIVE_KINDS)).alias("liked"),
            pl.col(schema.KIND).is_in(list(schema.NEGATIVE_KINDS)).alias("disliked"),
        )
        .group_by(schema.REQUEST_ID, schema.ITEM)
        .agg(pl.col("liked").any(), pl.col("disliked").any())
    )
    out = {}
    for arm, version in arms.items():
        served = impressions.filter((pl.col(schema.ARM) == arm) & (pl.col(schema.MODEL_VERSION) == version))
        shown = (
            served.select(schema.USER, schema.REQUEST_ID, pl.col("items").alias(schema.ITEM))
            .explode(schema.ITEM)
            .drop_nulls(schema.ITEM)
            .join(judged, on=[schema.REQUEST_ID, schema.ITEM], how="left")
            .group_by(schema.USER)
            .agg(
                pl.len().alias("impressions"),
                pl.col("liked").fill_null(False).sum().alias("likes"),
                pl.col("disliked").fill_null(False).sum().alias("dislikes"),
            )
        )
        per_user = (
            served.group_by(schema.USER)
            .agg(pl.len().alias("requests"), pl.col("error").fill_null(False).sum().alias("errors"))
            .join(shown, on=schema.USER, how="left")
            .fill_null(0)
            .sort(schema.USER)
        )
        latency = served.filter(~pl.col("error").fill_null(False))["latency_ms"].drop_nulls()
        out[arm] = ArmUsers(
            *(per_user[c].to_numpy().astype(float) for c in ("impressions", "likes", "dislikes", "requests", "errors")),
            latency_ms=latency.to_numpy().astype(float),
        )
    return out


def append_events(feedback_dir: Path, events: pl.DataFrame) -> Path:
    """Append a batch as a new immutable file; earlier files are never touched."""
    if schema.EVENT_ID not in events.columns:
        events = events.with_columns(pl.Series(schema.EVENT_ID, [uuid.uuid4().hex for _ in range(events.height)]))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return write_parquet(events, feedback_dir / f"events-{stamp}-{uuid.uuid4().hex[:8]}.parquet")


def feedback_examples(
    split: SplitData,
    store: pl.DataFrame,
    base: Examples,
    max_history: int,
    like_min: float,
    dislike_max: float,
    replay_ratio: float,
    seed: int,
    from_ratings: bool = True,
    requests: dict[str, str] | None = None,
) -> tuple[Examples, FeedbackStats]:
    """Examples from train-part ratings (unless from_ratings is False) and from stored events, plus replay.

    requests: request_id -> the user's own words for that request; a reaction to
    such a list is learnt against those words instead of a history-only template.
    """
    rng = np.random.default_rng(seed)
    builder = ExampleBuilder(max_history)
    likes = dislikes = 0
    for u, (seq, ratings) in enumerate(zip(split.train, split.train_ratings, strict=True)):
        if not from_ratings:
            break
        for start, first, end in windows(seq, max_history):
            examples = []
            for t in range(first, end):  # target seq[t], history seq[:t]
                r = ratings[t]
                if np.isnan(r) or dislike_max < r < like_min:
                    continue
                label = 1.0 if r >= like_min else -1.0
                ins = sampled_instruction(rng, FEEDBACK_MIX, split.catalogue, seq[:t], int(seq[t]), max_history)
                examples.append((t - 1 - start, ins, label, 1.0))
                likes, dislikes = likes + (label > 0), dislikes + (label < 0)
            if examples:
                builder.add_window(u, seq[start:end], examples)

    used, skipped = _store_rows(split, store, builder, max_history, rng, requests or {})
    n_feedback = len(builder)
    examples = builder.build()
    replay = _replay(base, int(round(replay_ratio * n_feedback)), rng)
    if len(replay):
        examples = _concat(examples, replay)
    return examples, FeedbackStats(likes, dislikes, used, skipped, replay.n_examples)


def examples_from_config(
    cfg: Config,
    split: SplitData,
    store: pl.DataFrame,
    base: Examples,
    online: bool = False,
    requests: dict[str, str] | None = None,
) -> tuple[Examples, FeedbackStats]:
    """feedback_examples with the config's labels and replay: offline (ratings of the train part + the store) or
    online (served-traffic events only, with their requests' words)."""
    f = cfg.feedback
    return feedback_examples(
        split,
        store,
        base,
        max_history=cfg.data.max_history,
        like_min=f.like_min_rating,
        dislike_max=f.dislike_max_rating,
        replay_ratio=f.online_replay_ratio if online else f.replay_ratio,
        seed=cfg.train.seed,
        from_ratings=not online,
        requests=requests,
    )


def _replay(base: Examples, n: int, rng: np.random.Generator) -> Examples:
    """Random base windows holding about n examples (at least n where the base has them)."""
    order = rng.permutation(len(base))
    per_window = (base.weight[order] > 0).sum(axis=1)
    take = int(np.searchsorted(np.cumsum(per_window), n) + 1) if n > 0 else 0
    return base.subset(np.sort(order[:take]))


def _store_rows(
    split: SplitData,
    store: pl.DataFrame,
    builder: ExampleBuilder,
    max_history: int,
    rng: np.random.Generator,
    requests: dict[str, str],
) -> tuple[int, int]:
    user_row = {u: i for i, u in enumerate(split.users)}
    used = skipped = 0
    for ev in store.iter_rows(named=True):
        u = user_row.get(ev[schema.USER])
        item = split.catalogue.index.get(ev[schema.ITEM]) if ev.get(schema.ITEM) else None
        if u is None or item is None:
            skipped += 1
            continue
        history = split.train[u]
        if ev[schema.KIND] == "instruction":
            if not ev.get(schema.TEXT):
                skipped += 1
                continue
            builder.add(u, item, free_text_instruction(ev[schema.TEXT], history, max_history, split.catalogue))
        else:
            label, weight = KIND_LABEL[ev[schema.KIND]]
            words = requests.get(ev.get(schema.REQUEST_ID) or "")
            ins = (
                free_text_instruction(words, history, max_history, split.catalogue)
                if words
                else make_instruction("P1/I0", int(rng.integers(1 << 30)), split.catalogue, history, item, max_history)
            )
            if ins is None:
                skipped += 1
                continue
            builder.add(u, item, ins, label=label, weight=weight)
        used += 1
    return used, skipped


def _concat(a: Examples, b: Examples) -> Examples:
    """Append b to a, re-indexing b's texts into a's text list."""
    index = {t: i for i, t in enumerate(a.texts)}
    texts = list(a.texts)
    for t in b.texts:
        if t not in index:
            index[t] = len(texts)
            texts.append(t)
    remap = np.append(np.asarray([index[t] for t in b.texts], dtype=np.int64), -1)  # -1 stays -1
    return Examples(
        user=np.concatenate([a.user, b.user]),
        seq=np.concatenate([a.seq, b.seq]),
        text_id=np.concatenate([a.text_id, remap[b.text_id]]),
        use_history=np.concatenate([a.use_history, b.use_history]),
        types=np.concatenate([a.types, b.types]),
        templates=np.concatenate([a.templates, b.templates]),
        label=np.concatenate([a.label, b.label]),
        weight=np.concatenate([a.weight, b.weight]),
        texts=texts,
    )
