"""Answering a request from an exported ONNX scorer (no PyTorch at serve time)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from transformers import BertTokenizerFast  # pyright: ignore[reportAttributeAccessIssue]  (lazy module)

from instructrec.config import ServeConfig
from instructrec.data import schema
from instructrec.data.split import Catalogue, chronological
from instructrec.language.instructions import (
    Instruction,
    free_text_instruction,
    make_instruction,
    pad_histories,
    plural,
    render,
)
from instructrec.language.understand import TitleIndex, Understood, constrain, lexicon, understand
from instructrec.serving import optimize
from instructrec.serving.batching import BatchPolicy, MicroBatcher
from instructrec.serving.export import OnnxScorer, Session, cuda_usable, make_session
from instructrec.serving.lists import ItemSpace, cite, mmr, nearest_neighbours, top_columns
from instructrec.serving.optimize import BATCHED_PREFERENCE, FP32

BUNDLE_MANIFEST = "serving.json"
VARIANTS_DIR = "variants"
ITEM_VECTORS = "item_vectors.npy"  # [n_items, dim] item-tower vectors, catalogue order
DEFAULT_REQUEST = "P1/I0"
NEIGHBOUR_TABLE = 50  # nearest items kept per item: the most a reaction can move (serve.neighbours is capped here)


def write_bundle(
    target: Path,
    tokenizer: BertTokenizerFast,
    catalogue: Catalogue,
    max_history: int,
    max_text_tokens: int,
    snapshot_hash: str,
    serving: dict[str, str] | None = None,
    variant_files: dict[str, Path] | None = None,
    item_vectors: np.ndarray | None = None,
) -> Path:
    """Everything besides the registered fp32 graph that serving needs, the chosen faster variants included."""
    target.mkdir(parents=True, exist_ok=True)
    if item_vectors is not None:
        np.save(target / ITEM_VECTORS, np.asarray(item_vectors, dtype=np.float32))
    tokenizer.save_pretrained(str(target / "tokenizer"))
    for name, path in (variant_files or {}).items():
        (target / VARIANTS_DIR).mkdir(exist_ok=True)
        shutil.copyfile(path, target / VARIANTS_DIR / f"{name}.onnx")
    manifest = {
        "item_ids": catalogue.item_ids,
        "titles": catalogue.titles,
        "genres": [list(g) for g in catalogue.genres],
        "years": catalogue.years,
        "noun": catalogue.noun,
        "max_history": max_history,
        "max_text_tokens": max_text_tokens,
        "snapshot_hash": snapshot_hash,
        "serving": serving or {"cpu": FP32, "cuda": FP32},
    }
    (target / BUNDLE_MANIFEST).write_text(json.dumps(manifest))
    return target


def read_catalogue(bundle: Path) -> Catalogue:
    """The catalogue a bundle was trained on (titles and genres; item texts are not shipped)."""
    return _catalogue(json.loads((bundle / BUNDLE_MANIFEST).read_text()))


def _catalogue(m: dict) -> Catalogue:
    genres = [tuple(g) for g in m["genres"]]
    years = m.get("years", [])  # bundles written before years were shipped have none
    return Catalogue(m["item_ids"], m["titles"], [""] * len(m["item_ids"]), genres, m["noun"], years=years)


def serving_graph(fp32_file: Path, bundle: Path, batched: bool = False, variant: str | None = None) -> tuple[Path, str]:
    """(graph file, variant name) that this host should serve, per the bundle's checked choice; `batched`: the
    choice for a service that batches requests, a row-independent graph (instructrec.serving.batching);
    `variant`: the operator's choice (serve.variant) instead, refused when the bundle lacks it or it cannot batch."""
    host = "cuda" if cuda_usable() else "cpu"
    shipped = [p.stem for p in sorted((bundle / VARIANTS_DIR).glob("*.onnx"))]
    if variant is not None:
        if batched and variant not in BATCHED_PREFERENCE[host]:
            raise ValueError(
                f"serve.variant={variant} cannot serve batched requests on {host} (its scores depend on the batch): "
                "set serve.batch_requests=1, or another serve.variant"
            )
        if variant != FP32 and variant not in shipped:
            raise ValueError(f"serve.variant={variant}: this model shipped {', '.join([FP32, *shipped])}")
        name = variant
    else:
        chosen = json.loads((bundle / BUNDLE_MANIFEST).read_text()).get("serving", {})
        if not batched:
            name = chosen.get(host, FP32)
        else:  # bundles older than the batched choice: the first allowed variant shipped (only eligible ones ship)
            allowed = [v for v in BATCHED_PREFERENCE[host] if v in shipped]
            name = chosen.get(optimize.batched(host)) or next(iter(allowed), FP32)
    path = bundle / VARIANTS_DIR / f"{name}.onnx"
    return (path, name) if name != FP32 and path.exists() else (fp32_file, FP32)


@dataclass(frozen=True)
class LoadOptions:
    """How a loaded model runs: ONNX Runtime's threads, the graph, and whether concurrent requests share calls."""

    threads: int | None = None  # intra-op threads (None: one per core)
    spinning: bool = True  # the threads busy-wait between calls: quicker back-to-back calls, the cores held meanwhile
    variant: str | None = None  # this graph instead of the bundle's choice (serving_graph)
    batching: BatchPolicy | None = None  # concurrent recommend() calls share calls (instructrec.serving.batching)

    @classmethod
    def serving(cls, serve: ServeConfig, batched: bool = False) -> LoadOptions:
        """From the serve.* settings; `batched`: as the service runs a model (serve.batch_requests)."""
        return cls(
            serve.onnx_threads or None, serve.onnx_spinning, serve.variant, BatchPolicy.of(serve) if batched else None
        )


@dataclass(frozen=True)
class Adaptation:
    """How a session's reactions bend the next list (serve.* settings; see instructrec.serving.session)."""

    demotion: float = 1.0  # a disliked item's closest neighbour loses this many score standard deviations
    promotion: float = 0.5  # a liked item's closest neighbour gains this many
    neighbours: int = 20  # items moved per liked or disliked item (the most similar ones)
    title_strength: float = 2.0  # what a title named in the request lends its nearest items (NEIGHBOUR_TABLE)
    diversity: float = 0.0  # MMR weight of the re-ranking, 0 (off) to 1
    cold_start_diversity: float = 0.3  # MMR weight of the popular list an unknown user without a request gets
    candidates: int = 100  # items the re-ranking chooses from

    @classmethod
    def of(cls, serve: ServeConfig, diversity: float | None = None) -> Adaptation:
        """From the serve.* settings; `diversity` (a request's own) overrides serve.diversity."""
        return cls(
            demotion=serve.demotion,
            promotion=serve.promotion,
            neighbours=serve.neighbours,
            title_strength=serve.title_strength,
            diversity=serve.diversity if diversity is None else diversity,
            cold_start_diversity=serve.cold_start_diversity,
            candidates=serve.rerank_candidates,
        )


@dataclass
class Recommender:
    session: Session
    tokenizer: BertTokenizerFast
    catalogue: Catalogue
    histories: dict[str, np.ndarray]  # user -> item indices in time order
    max_history: int
    max_text_tokens: int
    version: str = "?"
    variant: str = FP32
    space: ItemSpace | None = None  # item-tower vectors: similar items, demotion, reasons (absent in old bundles)
    rules: bool = (
        True  # requests read by instructrec.language.understand; False: the learned scorer alone reads every word
    )
    batching: BatchPolicy | None = None  # concurrent recommend() calls share scoring calls (the service's case)

    def __post_init__(self) -> None:
        self.scorer = OnnxScorer(f"v{self.version}", self.session, self.tokenizer, self.max_text_tokens)
        self.batcher = MicroBatcher(self.scorer, self.batching, f"v{self.version}") if self.batching else None
        self.popularity = (
            self.space.popularity if self.space is not None else item_counts(self.histories, self.catalogue.n_items)
        )
        self._neighbours: tuple[np.ndarray, np.ndarray] | None = None  # built on the first reaction
        self._titles: TitleIndex | None = None  # built on the first request in words
        self._lexicon = lexicon(self.catalogue)

    def understand(self, request: str | None) -> Understood:
        """What the request says for certain (refused genres, years, named titles): see instructrec.language.understand."""
        if not request or not self.rules:
            return Understood()
        if self._titles is None:
            self._titles = TitleIndex(self.catalogue, self.popularity)
        return understand(request, self.catalogue, self._titles, self._lexicon)

    @classmethod
    def load(
        cls,
        onnx_file: Path,
        bundle: Path,
        interactions: pl.DataFrame,
        version: str = "?",
        options: LoadOptions = LoadOptions(),
    ) -> Recommender:
        rec = cls.from_bundle(onnx_file, bundle, version, options)
        rec.histories = user_histories(interactions, rec.catalogue)
        rec.popularity = item_counts(rec.histories, rec.catalogue.n_items)
        if (bundle / ITEM_VECTORS).exists():
            rec.space = ItemSpace.build(
                np.load(bundle / ITEM_VECTORS), rec.catalogue.genres, rec.popularity, len(rec.histories)
            )
            rec._neighbours = nearest_neighbours(rec.space.unit, NEIGHBOUR_TABLE)  # before the first request
        return rec

    @classmethod
    def from_bundle(
        cls, onnx_file: Path, bundle: Path, version: str = "?", options: LoadOptions = LoadOptions()
    ) -> Recommender:
        """The scorer and catalogue alone, without users: what a batch worker needs to rank the users it is sent."""
        m = json.loads((bundle / BUNDLE_MANIFEST).read_text())
        tokenizer = BertTokenizerFast.from_pretrained(str(bundle / "tokenizer"), local_files_only=True)
        graph, variant = serving_graph(onnx_file, bundle, options.batching is not None, options.variant)
        session = make_session(graph, threads=options.threads, spinning=options.spinning)
        return cls(
            session,
            tokenizer,
            _catalogue(m),
            {},
            m["max_history"],
            m["max_text_tokens"],
            version,
            variant,
            batching=options.batching,
        )

    def close(self) -> None:
        """Retire the model: its batcher answers what is queued, later calls score alone."""
        if self.batcher is not None:
            self.batcher.close()

    def request(self, history: np.ndarray, instruction: str | None = None) -> Instruction:
        """The user's own words beside their history; history alone; or a cold-start request."""
        if instruction:
            return free_text_instruction(instruction, history, self.max_history, self.catalogue)
        if len(history):
            ins = make_instruction(DEFAULT_REQUEST, 0, self.catalogue, history, None, self.max_history)
            assert ins is not None, "the default request is expressible for any non-empty history"
            return ins
        return free_text_instruction(
            f"Recommend a popular {self.catalogue.noun}.", history, self.max_history, self.catalogue
        )

    def indices(self, item_ids: Iterable[str]) -> np.ndarray:
        """Catalogue indices of the ids this model knows (others, e.g. items added since, are skipped)."""
        return np.asarray([self.catalogue.index[i] for i in item_ids if i in self.catalogue.index], dtype=np.int64)

    def recommend(
        self,
        user_id: str,
        instruction: str | None = None,
        k: int = 10,
        exclude: Iterable[str] = (),
        liked: Iterable[str] = (),
        disliked: Iterable[str] = (),
        adapt: Adaptation = Adaptation(),
    ) -> dict:
        """Top-k for the user, never an item of their history nor one in `exclude` (item ids already judged).

        liked: items the user liked this session, read as the newest part of their history, whose
        neighbours gain up to `adapt.promotion` score standard deviations; disliked: items whose
        neighbours lose up to `adapt.demotion`.
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        known = self.histories.get(str(user_id), np.zeros(0, dtype=np.int64))
        fresh = self.indices(liked)
        understood = self.understand(instruction)
        named = np.asarray(understood.like, dtype=np.int64)  # titles the request names join the history, newest
        added = np.concatenate([fresh, named])
        added = added[np.sort(np.unique(added, return_index=True)[1])]
        history = np.concatenate([known, added[~np.isin(added, known)]])  # a known title keeps its place
        blocked = np.concatenate([history, self.indices(exclude)]) - 1
        if not len(history) and not instruction and self.space is not None:
            return self._popular(str(user_id), k, blocked, adapt)
        words = understood.rest if understood.constrains else instruction  # refused genres and titles taken out
        ins = self.request(history, words or None)
        scores = self._score(ins).astype(np.float64)
        scores[blocked] = -np.inf  # never recommend what the user already has or has judged
        scores = self._nudge(scores, fresh - 1, adapt.promotion, adapt.neighbours)
        scores = self._nudge(scores, named - 1, adapt.title_strength, NEIGHBOUR_TABLE)
        avoided = np.concatenate([self.indices(disliked), np.asarray(understood.unlike, dtype=np.int64)])
        scores = self._nudge(scores, avoided - 1, -adapt.demotion, adapt.neighbours)
        scores = constrain(scores, understood, self.catalogue)
        top = self._pick(scores, k, adapt.diversity, adapt.candidates)
        liked_now = set(added.tolist())
        items = [self._item(c, float(scores[c]), r, history, liked_now, understood) for r, c in enumerate(top)]
        head = self._head(str(user_id), bool(len(known)), render(ins, self.catalogue), ins.type)
        if instruction:
            head["understood"] = understood.to_dict(self.catalogue)
        return {**head, "items": items}

    def similar(self, item_id: str, k: int = 10, exclude: Iterable[str] = ()) -> dict:
        """The k items closest to `item_id` in the item tower (cosine), never itself nor `exclude`."""
        space = self._require_space()
        if item_id not in self.catalogue.index:
            raise KeyError(item_id)
        col = self.catalogue.index[item_id] - 1
        sims = (space.unit @ space.unit[col]).astype(np.float64)
        sims[np.concatenate([[col], self.indices(exclude) - 1])] = -np.inf
        top = self._pick(sims, k, 0.0, 0)
        items = [
            {
                "rank": r + 1,
                "item_id": self.catalogue.item_ids[c],
                "title": self.catalogue.titles[c],
                "score": round(float(sims[c]), 4),
                "reason": f"like {self.catalogue.titles[col]}",
            }
            for r, c in enumerate(top)
        ]
        return {"item_id": item_id, "title": self.catalogue.titles[col], "model_version": self.version, "items": items}

    # -- parts ----------------------------------------------------------------
    def _score(self, ins: Instruction) -> np.ndarray:
        """[n_items] scores of one request: alone, or in a call shared with concurrent requests."""
        history = pad_histories([ins.history], self.max_history)
        if self.batcher is not None:
            return self.batcher.score(ins.text, history[0])
        return self.scorer.score([ins.text], history)[0]

    def _require_space(self) -> ItemSpace:
        if self.space is None:
            raise LookupError(
                f"model v{self.version} was exported without item vectors (before similar items existed); "
                "serve a version trained since"
            )
        return self.space

    def _nudge(self, scores: np.ndarray, reacted: np.ndarray, strength: float, neighbours: int) -> np.ndarray:
        """Move the nearest neighbours of the `reacted` columns by up to `strength` score standard deviations.

        Bounded: an item moves by strength x spread x its cosine to the closest reacted item, whatever
        the number of reactions; only each reacted item's `neighbours` nearest items move at all.
        """
        if self.space is None or not len(reacted) or strength == 0:
            return scores
        if self._neighbours is None:
            self._neighbours = nearest_neighbours(self.space.unit, NEIGHBOUR_TABLE)
        idx, sims = self._neighbours
        near, cos = idx[reacted, :neighbours].ravel(), np.clip(sims[reacted, :neighbours], 0.0, 1.0).ravel()
        moved = np.zeros(len(scores))
        np.maximum.at(moved, near, cos)
        finite = np.isfinite(scores)
        spread = float(scores[finite].std()) if finite.sum() > 1 else 0.0
        return scores + strength * spread * moved

    def _pick(self, scores: np.ndarray, k: int, diversity: float, candidates: int) -> np.ndarray:
        n = int(np.isfinite(scores).sum())
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if diversity <= 0 or self.space is None:
            return top_columns(scores[None], min(k, n))[0]
        pool = top_columns(scores[None], min(max(candidates, k), n))[0]
        return mmr(scores[pool], pool, self.space.unit, k, diversity)

    def _popular(self, user_id: str, k: int, blocked: np.ndarray, adapt: Adaptation) -> dict:
        """An unknown user without a request: popular items, re-ranked for diversity."""
        scores = np.log1p(self.popularity)
        scores[blocked] = -np.inf
        top = self._pick(scores, k, adapt.cold_start_diversity, adapt.candidates)
        items = [
            {
                "rank": r + 1,
                "item_id": self.catalogue.item_ids[c],
                "title": self.catalogue.titles[c],
                "score": round(float(scores[c]), 4),
                "reason": f"popular: {int(self.popularity[c])} people have it",
            }
            for r, c in enumerate(top)
        ]
        return {
            **self._head(user_id, False, f"popular {plural(self.catalogue.noun)}, varied", "P0/popular"),
            "items": items,
        }

    def _head(self, user_id: str, known: bool, instruction: str, type_: str) -> dict:
        return {
            "user_id": user_id,
            "known_user": known,
            "instruction": instruction,
            "instruction_type": type_,
            "model_version": self.version,
            "provider": self.session.provider,
            "variant": self.variant,
        }

    def _item(
        self, col: int, score: float, rank: int, history: np.ndarray, liked: set[int], understood: Understood
    ) -> dict:
        """One listed item with the reason a person reads: the history item behind it, the words it matches."""
        out = {
            "rank": rank + 1,
            "item_id": self.catalogue.item_ids[col],
            "title": self.catalogue.titles[col],
            "score": round(float(score), 4),
        }
        parts = []
        cited = cite(col, history[-self.max_history :] - 1, self.space.unit) if self.space is not None else None
        if cited is not None:
            out["because"] = self.catalogue.item_ids[cited]
            source = (
                "which you asked for"
                if cited + 1 in understood.like
                else ("which you liked" if cited + 1 in liked else "in your history")
            )
            parts.append(f"like {self.catalogue.titles[cited]}, {source}")
        matches = [g.lower() for g in self.catalogue.genres[col] if g in understood.genres]  # never a refused one
        year = self.catalogue.years[col]
        if understood.years and year:
            matches.append(str(year))
        if matches:
            out["matches"] = matches
            parts.append("matches: " + ", ".join(matches))
        out["reason"] = "; ".join(parts) or f"a {self.catalogue.noun} for your request"
        return out


def top_k_all(rec: Recommender, k: int = 10, batch_size: int = 256) -> pl.DataFrame:
    """Top-k for every known user (history-only instruction), history excluded, in batches of users."""
    users = sorted(rec.histories)
    parts = [
        top_k_rows(rec, chunk, [rec.histories[u] for u in chunk], k)
        for chunk in (users[s : s + batch_size] for s in range(0, len(users), batch_size))
    ]
    return pl.concat(parts) if parts else top_k_rows(rec, [], [], k)


def top_k_rows(rec: Recommender, users: list[str], histories: list[np.ndarray], k: int) -> pl.DataFrame:
    """Top-k rows (user_id, rank, item_id, score) for one batch of users, each history excluded.

    The one scoring step of batch inference, whatever runs it (one process, or a Ray actor).
    Item vectors are constants of the graph, so a batch costs one encoder pass over its
    instructions plus one product with the catalogue.
    """
    k = min(k, rec.catalogue.n_items - 1)  # argpartition needs k < catalogue size
    columns = {"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String, "score": pl.Float32}
    if not users:
        return pl.DataFrame(schema=columns)
    requests = [rec.request(h) for h in histories]
    padded = pad_histories([ins.history for ins in requests], rec.max_history)
    scores = rec.scorer.score([ins.text for ins in requests], padded).astype(np.float32)
    for r, history in enumerate(histories):
        scores[r, history - 1] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable"), 1)
    return pl.DataFrame(
        {
            "user_id": np.repeat(np.asarray(users, dtype=object), k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(users)),
            "item_id": np.asarray(rec.catalogue.item_ids, dtype=object)[order.ravel()],
            "score": np.take_along_axis(scores, order, 1).ravel(),
        },
        schema=columns,
    )


def item_counts(histories: dict[str, np.ndarray], n_items: int) -> np.ndarray:
    """[n_items] users per item (a history holds an item once)."""
    return np.bincount(np.concatenate([np.zeros(0, np.int64), *histories.values()]), minlength=n_items + 1)[1:].astype(
        float
    )


def user_histories(interactions: pl.DataFrame, catalogue: Catalogue) -> dict[str, np.ndarray]:
    known = interactions.filter(pl.col(schema.ITEM).is_in(pl.Series(catalogue.item_ids).implode()))
    grouped = (
        known.with_columns(pl.col(schema.ITEM).replace_strict(catalogue.index, return_dtype=pl.Int64).alias("idx"))
        .pipe(chronological)
        .group_by(schema.USER, maintain_order=True)
        .agg("idx")
    )
    return {
        u: np.asarray(s, dtype=np.int64) for u, s in zip(grouped[schema.USER], grouped["idx"].to_list(), strict=True)
    }
