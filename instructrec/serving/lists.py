"""What a list is besides accurate: diversity, coverage, novelty, an MMR re-ranking, and reasons.

All functions take 0-based item columns (catalogue index - 1). Item similarity
is the cosine of item-tower vectors (`ItemSpace.unit`); genre diversity is
the Jaccard distance of genre sets, so the two views can disagree, and both
are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LIST_METRICS = ("ild_genre@10", "ild_vector@10", "coverage@10", "novelty@10")


@dataclass(frozen=True)
class ItemSpace:
    """Per item (0-based): unit item-tower vectors, genre sets (multi-hot), and popularity in training."""

    unit: np.ndarray  # [n_items, dim] float32, rows of norm 1 (or 0 for a zero vector)
    genres: np.ndarray  # [n_items, n_genres] bool
    popularity: np.ndarray  # [n_items] interactions (or users) per item in training
    n_users: int

    @classmethod
    def build(
        cls, vectors: np.ndarray, genres: list[tuple[str, ...]], popularity: np.ndarray, n_users: int
    ) -> ItemSpace:
        return cls(unit_rows(vectors), genre_matrix(genres), np.asarray(popularity, dtype=np.float64), int(n_users))

    @property
    def n_items(self) -> int:
        return len(self.unit)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def nearest_neighbours(unit: np.ndarray, n: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """([items, n] columns, [items, n] cosines) of each item's n most similar others, most similar first.

    Computed once per model (a chunked catalogue x catalogue product), so that moving a reacted item's
    neighbours costs a lookup per request, not a product with the catalogue.
    """
    items = len(unit)
    n = min(n, items - 1)
    idx = np.zeros((items, n), dtype=np.int64)
    sims = np.zeros((items, n), dtype=np.float32)
    for start in range(0, items, chunk):
        block = unit[start : start + chunk] @ unit.T
        rows = np.arange(len(block))
        block[rows, rows + start] = -np.inf  # never its own neighbour
        part = np.argpartition(-block, n - 1, axis=1)[:, :n] if n < items else np.argsort(-block, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(block, part, 1), axis=1, kind="stable")
        idx[start : start + chunk] = np.take_along_axis(part, order, 1)
        sims[start : start + chunk] = np.take_along_axis(block, idx[start : start + chunk], 1)
    return idx, sims


def genre_matrix(genres: list[tuple[str, ...]]) -> np.ndarray:
    names = sorted({g for gs in genres for g in gs})
    col = {g: j for j, g in enumerate(names)}
    out = np.zeros((len(genres), max(len(names), 1)), dtype=bool)
    for i, gs in enumerate(genres):
        out[i, [col[g] for g in gs]] = True
    return out


def _pairwise_mean(dist: np.ndarray) -> np.ndarray:
    """[L, k, k] distances -> [L] mean over the k(k-1) off-diagonal pairs."""
    k = dist.shape[1]
    if k < 2:
        return np.zeros(len(dist))
    off = ~np.eye(k, dtype=bool)
    return dist[:, off].mean(axis=1)


def ild_genre(top: np.ndarray, space: ItemSpace) -> np.ndarray:
    """[L] intra-list diversity: mean pairwise Jaccard distance of genre sets (items without genres: distance 1)."""
    g = space.genres[top].astype(np.float32)  # [L, k, G]
    inter = g @ g.transpose(0, 2, 1)
    sizes = g.sum(-1)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    return _pairwise_mean(1.0 - np.divide(inter, union, out=np.zeros_like(inter), where=union > 0))


def ild_vector(top: np.ndarray, space: ItemSpace) -> np.ndarray:
    """[L] intra-list diversity: mean pairwise cosine distance (1 - cos) of item-tower vectors."""
    u = space.unit[top]
    return _pairwise_mean(1.0 - u @ u.transpose(0, 2, 1))


def coverage(top: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    return float(len(np.unique(top)) / n_items) if n_items else 0.0


def self_information(space: ItemSpace) -> np.ndarray:
    """[n_items] -log2 of the share of users with the item (add-one smoothed): rare items carry more."""
    return -np.log2((space.popularity + 1.0) / (space.n_users + 1.0))


def novelty(top: np.ndarray, space: ItemSpace) -> np.ndarray:
    """[L] mean self-information of the listed items (Zhou et al. 2010)."""
    return self_information(space)[top].mean(axis=1)


def list_metrics(top: np.ndarray, space: ItemSpace) -> dict[str, float]:
    """The LIST_METRICS over lists top [L, 10] (0-based columns)."""
    if len(top) == 0:
        return dict.fromkeys(LIST_METRICS, float("nan"))
    return {
        "ild_genre@10": float(ild_genre(top, space).mean()),
        "ild_vector@10": float(ild_vector(top, space).mean()),
        "coverage@10": coverage(top, space.n_items),
        "novelty@10": float(novelty(top, space).mean()),
    }


def served_list_metrics(lists: list[list[int]], space: ItemSpace) -> dict[str, float]:
    """The LIST_METRICS over lists of any lengths (served impressions): per-list values averaged over lists."""
    by_length: dict[int, list[list[int]]] = {}
    for items in lists:
        if len(items) >= 2:
            by_length.setdefault(len(items), []).append(items)
    if not by_length:
        return dict.fromkeys(LIST_METRICS, float("nan"))
    parts = [np.asarray(group) for group in by_length.values()]
    flat = np.concatenate([p.ravel() for p in parts])
    return {
        "ild_genre@10": float(np.concatenate([ild_genre(p, space) for p in parts]).mean()),
        "ild_vector@10": float(np.concatenate([ild_vector(p, space) for p in parts]).mean()),
        "coverage@10": coverage(flat, space.n_items),
        "novelty@10": float(np.concatenate([novelty(p, space) for p in parts]).mean()),
    }


def top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """[B, k] columns of the k best finite scores, best first (ties in column order)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    # stable order: by score, then by column, as metrics.target_ranks breaks ties
    keys = np.lexsort((part, -np.take_along_axis(scores, part, 1)), axis=1)
    return np.take_along_axis(part, keys, 1)


def mmr(relevance: np.ndarray, candidates: np.ndarray, unit: np.ndarray, k: int, diversity: float) -> np.ndarray:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): k of `candidates`, greedily.

    Each pick maximises (1 - diversity) * relevance - diversity * (max cosine to the items already
    picked), relevance min-max scaled over the candidates so that `diversity` in [0, 1] means the
    same for every scorer. diversity 0 keeps the relevance order.
    """
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    keep = np.isfinite(relevance)  # excluded items (-inf) are never candidates
    candidates, relevance = np.asarray(candidates)[keep], np.asarray(relevance)[keep]
    k = min(k, len(candidates))
    if diversity == 0.0 or k <= 1:
        return candidates[np.argsort(-relevance, kind="stable")][:k]
    span = float(relevance.max() - relevance.min())
    rel = (relevance - relevance.min()) / span if span > 0 else np.zeros_like(relevance)
    vec = unit[candidates]
    closest = np.full(len(candidates), -1.0)  # max similarity to the picked items
    free = np.ones(len(candidates), dtype=bool)
    picked = []
    for step in range(k):
        value = (1.0 - diversity) * rel - diversity * (closest if step else 0.0)
        j = int(np.argmax(np.where(free, value, -np.inf)))
        picked.append(j)
        free[j] = False
        closest = np.maximum(closest, vec @ vec[j])
    return candidates[picked]


def cite(item: int, history: np.ndarray, unit: np.ndarray) -> int | None:
    """The history column most similar to `item` in the item tower (None without a positively similar one)."""
    if len(history) == 0:
        return None
    sims = unit[history] @ unit[item]
    best = int(np.argmax(sims))
    return int(history[best]) if sims[best] > 0 else None
