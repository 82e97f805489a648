"""The fixed evaluation protocol (docs/protocol.md), for any scorer.

Cases (instructions, targets, exclusions, sampled negatives) are built once
per run and shared by every model, so challenger, champion and popularity
are compared on exactly the same split and the same instructions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch

from instructrec.data.split import SplitData
from instructrec.evaluation import metrics
from instructrec.language.instructions import (
    HELD_OUT,
    HISTORY_ONLY,
    history_only_wording,
    make_instruction,
    pad_histories,
    worded,
)
from instructrec.models.model import InstructRecScorer
from instructrec.serving.lists import ItemSpace, cite, list_metrics, mmr, top_columns

HEADLINE = "P1/I0"
NO_WORDS = "no-words"  # the challenger on the worded cases with their words removed (`without_words`)


class Scorer(Protocol):
    name: str

    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray:
        """[B, n_items] scores in catalogue order; history is [B, H] catalogue indices."""
        ...


def scored_in_batches(scorer: Scorer, texts: list[str], hist: np.ndarray, size: int = 64) -> np.ndarray:
    """[len(texts), n_items] scores, `size` rows a call (a figure's or a parity check's sample, not the protocol)."""
    return np.concatenate([scorer.score(texts[i : i + size], hist[i : i + size]) for i in range(0, len(texts), size)])


@dataclass
class EvalCase:
    type: str
    users: np.ndarray  # [n] user rows of the split
    texts: list[str]
    templates: list[str]
    history: np.ndarray  # [n, H] left-padded item indices
    target: np.ndarray  # [n] item index
    exclude: list[np.ndarray]  # per row: item indices seen before the target
    negatives: np.ndarray  # [n, n_neg] item indices never seen by the user


def build_cases(
    split: SplitData,
    types: tuple[str, ...],
    max_history: int,
    seed: int,
    n_negatives: int = 9,
    target: str = "test",
    held_out: bool = False,
) -> dict[str, EvalCase]:
    """One case per instruction type over all evaluable users (seeded).

    With `held_out`, the instructions come from the templates training never
    saw, and each case is keyed "<type>/held-out".
    """
    rng = np.random.default_rng(seed)
    n_items = split.catalogue.n_items
    users = split.eval_users
    cases = {}
    targets_of = split.test if target == "test" else split.valid
    # per user, shared by every type's case (the same items): what they saw before the target, what the ranking
    # excludes, and everything up to the test target (what negatives never are)
    seen_of: dict[int, np.ndarray] = {}
    excluded: dict[int, np.ndarray] = {}
    ever_seen: dict[int, set[int]] = {}
    for type_ in types:
        rows, texts, templates, hists, targets, excl, negs = [], [], [], [], [], [], []
        for u in users.tolist():
            tgt = int(targets_of[u])
            if u not in seen_of:
                seen_of[u] = split.history_before_test(u) if target == "test" else split.train[u]
            seen = seen_of[u]
            ins = make_instruction(type_, int(rng.integers(1 << 30)), split.catalogue, seen, tgt, max_history, held_out)
            if ins is None:
                continue
            if u not in ever_seen:
                ever_seen[u] = set(split.train[u].tolist()) | {int(split.valid[u]), int(split.test[u])}
                excluded[u] = np.setdiff1d(seen, [tgt])
            negs.append(_padded(_sample_unseen(rng, n_items, ever_seen[u], n_negatives), tgt, n_negatives))
            rows.append(u)
            texts.append(ins.text)
            templates.append(ins.template)
            hists.append(ins.history)
            targets.append(tgt)
            excl.append(excluded[u])
        if rows:
            cases[f"{type_}/{HELD_OUT}" if held_out else type_] = EvalCase(
                type_,
                np.asarray(rows),
                texts,
                templates,
                pad_histories(hists, max_history),
                np.asarray(targets),
                excl,
                np.stack(negs),
            )
    return cases


def without_words(cases: dict[str, EvalCase], noun: str) -> dict[str, EvalCase]:
    """The worded cases (P2, I1, I2; seen and held-out) with their words removed: "the same model without the words".

    Each row keeps its user, history, target, exclusions and negatives and reads the history-only wording instead:
    the text of the same user's P1/I0 row of the same template set where there is one (so on P1/I1 and P1/I2 the
    reference is exactly what the model answers that user's history-only request), else the set's first P1/I0
    wording. P0 and P2 rows have no history, so there the reference is the model's answer to no input at all.
    History-only cases are left out: without words they would be the challenger itself.
    """
    out = {}
    for key, case in cases.items():
        if not worded(case.type):
            continue
        held = key.endswith(f"/{HELD_OUT}")
        plain = cases.get(f"{HISTORY_ONLY}/{HELD_OUT}" if held else HISTORY_ONLY)
        fallback = history_only_wording(noun, held)
        by_user = (
            {int(u): (t, txt) for u, t, txt in zip(plain.users, plain.templates, plain.texts, strict=True)}
            if plain is not None
            else {}
        )
        picked = [by_user.get(int(u), fallback) for u in case.users]
        out[key] = replace(case, texts=[txt for _, txt in picked], templates=[t for t, _ in picked])
    return out


SAMPLING_ROUNDS = 64  # rejection rounds before the exact draw; a user who has seen nearly everything ends there


def _sample_unseen(rng: np.random.Generator, n_items: int, seen: np.ndarray | set[int], k: int) -> np.ndarray:
    """k distinct items the user never saw, or all of them where fewer exist (that row's sampled rank then reads
    fewer negatives). Rejection sampling, as the protocol has always drawn them (the same draws), for a bounded
    number of rounds, then an exact draw from what is left: no loop without an end."""
    out: list[int] = []
    seen_set = seen if isinstance(seen, set) else set(seen.tolist())
    want = max(0, min(k, n_items - len(seen_set)))  # seen holds catalogue indices 1..n_items
    for _ in range(SAMPLING_ROUNDS):
        if len(out) >= want:
            break
        for c in rng.integers(1, n_items + 1, size=2 * k).tolist():
            if c not in seen_set and c not in out:
                out.append(c)
                if len(out) == want:
                    break
    if len(out) < want:
        rest = np.setdiff1d(np.arange(1, n_items + 1), np.asarray([*seen_set, *out], dtype=np.int64))
        out += rng.choice(rest, want - len(out), replace=False).tolist()
    return np.asarray(out, dtype=np.int64)


def _padded(negatives: np.ndarray, target: int, k: int) -> np.ndarray:
    """A row of k negative columns: where the user left fewer than k items unseen, the rest repeat the target,
    which never ranks ahead of itself (metrics.sampled_ranks), so the row is ranked among the negatives it has."""
    if len(negatives) == k:
        return negatives
    return np.concatenate([negatives, np.full(k - len(negatives), target, dtype=np.int64)])


@dataclass
class EvalReport:
    name: str
    by_type: dict[str, dict[str, float]]
    slices: dict[str, dict[str, float]]
    per_user: dict[str, np.ndarray]  # type -> per-user NDCG@10, aligned with the case's users
    users: dict[str, np.ndarray]  # type -> user rows
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def overall(self) -> dict[str, float]:
        """Mean over instruction types of each metric."""
        names = next(iter(self.by_type.values())).keys()
        return {m: float(np.mean([v[m] for v in self.by_type.values()])) for m in names}

    def user_metric(self) -> tuple[np.ndarray, np.ndarray]:
        """(user rows, NDCG@10 averaged over the types each user has) - the gate's paired unit."""
        total: dict[int, list[float]] = {}
        for type_, values in self.per_user.items():
            for u, v in zip(self.users[type_], values, strict=True):
                total.setdefault(int(u), []).append(float(v))
        users = np.asarray(sorted(total))
        return users, np.asarray([np.mean(total[u]) for u in users])

    def user_metric_by_type(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per type key ("P1/I0", "P2/I0/held-out", ...): (user rows, their NDCG@10), sorted by user - the gate's
        like-for-like unit (one type against a reference that can serve it)."""
        out = {}
        for key, values in self.per_user.items():
            order = np.argsort(self.users[key], kind="stable")
            out[key] = (np.asarray(self.users[key])[order], np.asarray(values, dtype=float)[order])
        return out

    def to_dict(self) -> dict:
        return {
            "model": self.name,
            "overall": self.overall,
            "by_type": self.by_type,
            "slices": self.slices,
            "counts": self.counts,
        }


def evaluate(
    scorer: Scorer,
    cases: dict[str, EvalCase],
    split: SplitData,
    cold_max_train: int = 20,
    long_tail_share: float = 0.8,
    batch_size: int = 256,
    space: ItemSpace | None = None,
) -> EvalReport:
    """Every case's full-ranking and 1+9 metrics; with `space`, the top-10 lists' diversity, coverage, novelty too."""
    n_items = split.catalogue.n_items
    head = head_items(split.popularity, 1.0 - long_tail_share)
    cold = np.asarray([len(s) <= cold_max_train for s in split.train])
    by_type, per_user, users, pooled = (
        {},
        {},
        {},
        {"cold_users": [], "warm_users": [], "long_tail": [], "head_items": []},
    )
    buffer = np.empty((0, n_items))  # one [batch, items] array reused by every batch (no per-batch churn)
    for type_, case in cases.items():
        full_ranks, samp_ranks, tops = [], [], []
        for start in range(0, len(case.users), batch_size):
            sl = slice(start, start + batch_size)
            raw = np.asarray(scorer.score(case.texts[sl], case.history[sl]))
            dtype = np.result_type(raw.dtype, np.float32)  # the scorer's own precision: ranks as it ranks
            if buffer.dtype != dtype or len(buffer) < len(raw):
                buffer = np.empty((max(batch_size, len(raw)), n_items), dtype)
            scores = buffer[: len(raw)]
            scores[...] = raw
            seen = _seen_cells(case.exclude[sl])
            scores[seen] = np.nan  # never ahead of the target: the protocol's exclusion
            tcol = case.target[sl] - 1
            full_ranks.append(metrics.target_ranks(scores, tcol))
            samp_ranks.append(metrics.sampled_ranks(scores, tcol, case.negatives[sl] - 1))
            if space is not None:
                scores[seen] = -np.inf
                tops.append(top_columns(scores, 10))
        full = metrics.per_row(np.concatenate(full_ranks), metrics.FULL_METRICS)
        samp = metrics.per_row(np.concatenate(samp_ranks), metrics.SAMPLED_METRICS, prefix="s_")
        by_type[type_] = {k: float(v.mean()) for k, v in {**full, **samp}.items()}
        if space is not None:
            by_type[type_].update(list_metrics(np.concatenate(tops), space))
        per_user[type_], users[type_] = full["ndcg@10"], case.users
        is_cold, is_head = cold[case.users], np.isin(case.target, head)
        for name, mask in (
            ("cold_users", is_cold),
            ("warm_users", ~is_cold),
            ("long_tail", ~is_head),
            ("head_items", is_head),
        ):
            pooled[name].append(full["ndcg@10"][mask])
    slices = {}
    for name, parts in pooled.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        slices[name] = {"ndcg@10": float(values.mean()) if len(values) else float("nan"), "n": int(len(values))}
    counts = {t: int(len(c.users)) for t, c in cases.items()}
    return EvalReport(scorer.name, by_type, slices, per_user, users, counts)


def _seen_cells(exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of every row's excluded items, for one fancy-indexed assignment."""
    rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
    return rows, np.concatenate(exclude).astype(np.int64) - 1


def _ranked(scorer: Scorer, case: EvalCase, rows: np.ndarray, n_items: int) -> np.ndarray:
    """[len(rows), n_items] scores of the case's rows, the user's earlier items at -inf (the protocol's exclusion)."""
    scores = np.asarray(scorer.score([case.texts[r] for r in rows], case.history[rows]), dtype=np.float64)
    for j, r in enumerate(rows):
        scores[j, case.exclude[r] - 1] = -np.inf
    return scores


def diversity_tradeoff(
    scorer: Scorer,
    case: EvalCase,
    space: ItemSpace,
    weights: tuple[float, ...],
    candidates: int = 100,
    batch_size: int = 256,
) -> list[dict[str, float]]:
    """NDCG@10 against diversity when the top `candidates` are MMR re-ranked with each weight (0: none)."""
    n_items = space.n_items
    lists: dict[float, list[np.ndarray]] = {w: [] for w in weights}
    ranks: dict[float, list[int]] = {w: [] for w in weights}
    for start in range(0, len(case.users), batch_size):
        rows = np.arange(start, min(start + batch_size, len(case.users)))
        scores = _ranked(scorer, case, rows, n_items)
        pools = top_columns(scores, min(candidates, n_items))
        for j, r in enumerate(rows):
            target = int(case.target[r]) - 1
            for w in weights:
                top = mmr(scores[j, pools[j]], pools[j], space.unit, 10, w)
                lists[w].append(top)
                hit = np.flatnonzero(top == target)
                ranks[w].append(int(hit[0]) if len(hit) else 10)
    out = []
    for w in weights:
        top = np.stack(lists[w])
        out.append(
            {
                "diversity": w,
                "ndcg@10": float(metrics.ndcg(np.asarray(ranks[w]), 10).mean()),
                **list_metrics(top, space),
            }
        )
    return out


def explanation_faithfulness(
    scorer: Scorer, case: EvalCase, space: ItemSpace, rows: int = 512, k: int = 10, seed: int = 0
) -> dict[str, float]:
    """Does the cited history item support the listed item? Remove it and re-score: the share that drops.

    The same measure for a random history item is the chance level the citation should beat.
    """
    rng = np.random.default_rng(seed)
    n_items = space.n_items
    picked = np.flatnonzero((case.history > 0).sum(1) >= 2)[:rows]  # one item left after a removal
    drops = {"cited": [], "random": []}
    for start in range(0, len(picked), 32):
        chunk = picked[start : start + 32]
        base = _ranked(scorer, case, chunk, n_items)
        texts, hists, asks = [], [], []  # one re-scored row per (user, removed item)
        for j, r in enumerate(chunk):
            hist = case.history[r]
            real = hist[hist > 0] - 1
            for c in top_columns(base[j : j + 1], k)[0]:
                for kind, removed in (("cited", cite(int(c), real, space.unit)), ("random", int(rng.choice(real)))):
                    if removed is None:
                        continue
                    kept = hist[hist != removed + 1]
                    texts.append(case.texts[r])
                    hists.append(np.concatenate([np.zeros(len(hist) - len(kept), dtype=hist.dtype), kept]))
                    asks.append((kind, j, int(c)))
        if not texts:
            continue
        rescored = np.asarray(scorer.score(texts, np.stack(hists)), dtype=np.float64)
        for (kind, j, c), row in zip(asks, rescored, strict=True):
            drops[kind].append(base[j, c] - row[c])
    out: dict[str, float] = {"users": int(len(picked)), "k": k}
    for kind, values in drops.items():
        v = np.asarray(values)
        out[f"{kind}_lowered_share"] = float((v > 0).mean()) if len(v) else float("nan")
        out[f"{kind}_mean_drop"] = float(v.mean()) if len(v) else float("nan")
        out[f"{kind}_n"] = int(len(v))
    return out


def head_items(popularity: np.ndarray, head_share: float) -> np.ndarray:
    """Most popular items that together hold `head_share` of train interactions."""
    order = np.argsort(-popularity[1:], kind="stable") + 1
    cum = np.cumsum(popularity[order]) / max(popularity.sum(), 1.0)
    return order[: int(np.searchsorted(cum, head_share) + 1)]


class PopularityScorer:
    name = "popularity"

    def __init__(self, popularity: np.ndarray):
        self.popularity = popularity[1:].astype(np.float64)

    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(texts), len(self.popularity)))


class CatalogueMap:
    """A model's item indices seen through another catalogue (a champion trained before items changed)."""

    def __init__(self, model_item_ids: list[str], catalogue_ids: list[str]):
        model_index = {item: i + 1 for i, item in enumerate(model_item_ids)}
        self.to_model = np.asarray([0] + [model_index.get(i, 0) for i in catalogue_ids], dtype=np.int64)
        self.known = self.to_model[1:] > 0
        self.identity = list(model_item_ids) == list(catalogue_ids)

    def scores(self, model_scores: np.ndarray) -> np.ndarray:
        """[B, model items] -> [B, catalogue items]; items the model never saw score -inf."""
        if self.identity:
            return model_scores
        out = np.full((len(model_scores), len(self.known)), -np.inf)
        out[:, self.known] = model_scores[:, self.to_model[1:][self.known] - 1]
        return out


class MappedScorer:
    """Any scorer (e.g. an ONNX graph) built on another catalogue, scored in this split's catalogue."""

    def __init__(self, inner: Scorer, model_item_ids: list[str], catalogue_ids: list[str]):
        self.name, self.inner, self.map = inner.name, inner, CatalogueMap(model_item_ids, catalogue_ids)

    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray:
        return self.map.scores(np.asarray(self.inner.score(texts, self.map.to_model[history])))


class TorchScorer:
    """Eager PyTorch scorer; maps between the model's and the split's catalogues."""

    def __init__(
        self,
        name: str,
        model: InstructRecScorer,
        tokenizer,
        model_item_ids: list[str],
        catalogue_ids: list[str],
        device: str = "cpu",
        text_cache: dict[str, torch.Tensor] | None = None,
    ):
        self.name, self.model, self.tokenizer, self.device = name, model.eval(), tokenizer, device
        self.map = CatalogueMap(model_item_ids, catalogue_ids)
        # pass a shared cache only while BERT is frozen: its text vectors never change then
        self._text_cache: dict[str, torch.Tensor] = {} if text_cache is None else text_cache

    @torch.inference_mode()
    def score(self, texts: list[str], history: np.ndarray) -> np.ndarray:
        hist = torch.as_tensor(self.map.to_model[history], device=self.device)
        items = self.model.item_vectors()
        q = self.model.query(
            self.model.text_vectors(self.tokenizer, texts, self._text_cache).to(self.device), hist, items
        )
        return self.map.scores(self.model.scores(q, items).float().cpu().numpy())
