"""Ranking metrics from 0-based ranks of the target (one target per row).

Ties are broken by item position (lower column first), identically for every
model, so a constant scorer is not rewarded for ties.
"""

from __future__ import annotations

import numpy as np


def target_ranks(scores: np.ndarray, target_col: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each row's target among the non-excluded columns.

    scores [B, N]; target_col [B]; exclude [B, N] bool (the target is never excluded). A NaN score is
    never ahead either: evaluation marks excluded items NaN in place instead of building the mask.
    """
    rows = np.arange(len(target_col))
    s_t = scores[rows, target_col][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    ahead = (scores > s_t) | ((scores == s_t) & (cols < target_col[:, None]))
    if exclude is not None:
        ahead &= ~exclude
    return ahead.sum(axis=1)


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """One relevant item: DCG = 1 / log2(rank + 2), ideal DCG = 1."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def mrr(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0)


FULL_METRICS = ("hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@10")
SAMPLED_METRICS = ("s_hr@1", "s_hr@3", "s_hr@5", "s_ndcg@3", "s_ndcg@5")
_FUNCS = {"hr": hit_rate, "ndcg": ndcg, "mrr": mrr}


def per_row(ranks: np.ndarray, names: tuple[str, ...], prefix: str = "") -> dict[str, np.ndarray]:
    """Per-row metric values for names like 'ndcg@10' (optionally 's_'-prefixed)."""
    out = {}
    for name in names:
        base, k = name.removeprefix(prefix).split("@")
        out[name] = _FUNCS[base](ranks, int(k))
    return out


def sampled_ranks(scores: np.ndarray, target_col: np.ndarray, negative_cols: np.ndarray) -> np.ndarray:
    """InstructRec protocol: rank of the target among itself + given negatives."""
    rows = np.arange(len(target_col))[:, None]
    cand = np.concatenate([target_col[:, None], negative_cols], axis=1)
    s = scores[rows, cand]
    ahead = (s[:, 1:] > s[:, :1]) | ((s[:, 1:] == s[:, :1]) & (cand[:, 1:] < cand[:, :1]))
    return ahead.sum(axis=1)


def ndcg_of_list(ranked: list[str], relevant: set[str], k: int) -> float:
    """NDCG@k of one ranked list against a set of relevant items (binary gains; the ideal puts them all first)."""
    if not relevant:
        return float("nan")
    dcg = sum(1.0 / np.log2(r + 2.0) for r, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / np.log2(r + 2.0) for r in range(min(k, len(relevant))))
    return float(dcg / ideal)
